"""``upgrade_net_proto_text``, ``upgrade_net_proto_binary``, ``upgrade_solver_proto_text``: rewrite old files."""

from __future__ import annotations

import logging

from caffe import upgrade
from caffe.proto import caffe_pb2 as pb
from caffe.protoio import read_binary, read_text, write_binary, write_text
from caffe.tools.registry import command

log = logging.getLogger("caffe")


def _upgrade_net(argv: list[str], tool: str, binary: bool) -> int:
    if len(argv) != 2:
        log.error("Usage: %s v0_net_proto_file_in net_proto_file_out", tool)
        return 1
    src, dst = argv
    net = read_binary(src, pb.NetParameter(), "caffemodel") if binary else read_text(src, pb.NetParameter())
    ok = True
    if upgrade.net_needs_upgrade(net):
        errors = _count_errors(lambda: upgrade.upgrade_net_as_needed(net, src))
        ok = errors == 0
        if not ok:
            log.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        log.error("File already in latest proto format: %s", src)
    (write_binary if binary else write_text)(dst, net)
    log.info("Wrote upgraded NetParameter %s proto to %s", "binary" if binary else "text", dst)
    return 0 if ok else 1


def _count_errors(fn: object) -> int:
    """Run ``fn`` and count the ERROR records the upgrade logs (Caffe's 'had problems' signal)."""

    class Counter(logging.Handler):
        n = 0

        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                Counter.n += 1

    handler = Counter()
    log.addHandler(handler)
    try:
        fn()  # type: ignore[operator]
    finally:
        log.removeHandler(handler)
    return Counter.n


@command("upgrade_net_proto_text", "upgrade a V0/V1 net prototxt to the current format")
def upgrade_net_proto_text(argv: list[str]) -> int:
    return _upgrade_net(argv, "upgrade_net_proto_text", binary=False)


@command("upgrade_net_proto_binary", "upgrade a V0/V1 binary net (.caffemodel) to the current format")
def upgrade_net_proto_binary(argv: list[str]) -> int:
    return _upgrade_net(argv, "upgrade_net_proto_binary", binary=True)


@command("upgrade_solver_proto_text", "upgrade a solver prototxt's solver_type enum to the type string")
def upgrade_solver_proto_text(argv: list[str]) -> int:
    if len(argv) != 2:
        log.error("Usage: upgrade_solver_proto_text old_solver_proto_file_in solver_proto_file_out")
        return 1
    src, dst = argv
    solver = read_text(src, pb.SolverParameter())
    if upgrade.solver_needs_type_upgrade(solver):
        upgrade.upgrade_solver_as_needed(solver, src)
    else:
        log.error("File already in latest proto format: %s", src)
    write_text(dst, solver)
    log.info("Wrote upgraded SolverParameter text proto to %s", dst)
    return 0
