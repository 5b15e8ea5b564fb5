"""Console-script entry points under Caffe's original tool names (each runs ``caffe <name>``)."""

from caffe.tools.cli import run_tool

upgrade_net_proto_text = run_tool("upgrade_net_proto_text")
upgrade_net_proto_binary = run_tool("upgrade_net_proto_binary")
upgrade_solver_proto_text = run_tool("upgrade_solver_proto_text")
