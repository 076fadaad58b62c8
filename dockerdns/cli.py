"""The `dockerdns` command: parse arguments, load settings, run a command.

Rule: exit codes are decided here and only here: 0 clean stop, 1 cannot start
(or Docker unreachable for `records`), 2 bad usage or configuration. Every
error is one line on stderr, never a traceback. Logging is configured here and
nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, app, config
from .config_reader import ConfigReader

PROG = "dockerdns"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(Exception):
    """The command line is wrong; the message is one line."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports bad usage as a UsageError instead of exiting with a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dockerdns` with `argv` (default: sys.argv[1:]); returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return _fail(f"error: {exc}", 2)
    except SystemExit as exc:  # --help and --version print, then exit
        return exc.code if isinstance(exc.code, int) else 0
    if args.command == "check-config":
        return _check_config(_config_file(getattr(args, "config", None)))
    flags = {key: value for key, value in vars(args).items() if key in config.FLAGS or key == config.CONFIG_FLAG}
    if args.command == "records":
        return _records(flags, args.json, args.watch)
    return _serve(flags)


def _config_file(given: str | None) -> str:
    """The file check-config reads: -c, else $DOCKERDNS_CONFIG, else the default file."""
    return given or os.environ.get(config.CONFIG_ENV, "").strip() or config.DEFAULT_CONFIG


def _serve(flags: dict[str, object]) -> int:
    try:
        settings = config.load(flags, os.environ)
    except config.ConfigError as exc:
        return _problems(exc.problems)
    _configure_logging(settings.log.level)
    reader = ConfigReader(flags)  # SIGHUP: read in a child process, off the queries' CPU
    try:
        return app.serve(reader.load, settings)
    except app.StartError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 0
    finally:
        reader.close()


def _records(flags: dict[str, object], as_json: bool, watch: bool) -> int:
    # Imported here so that the other commands never depend on the docker package.
    from .docker_source import DockerUnavailable

    try:
        settings = config.load(flags, os.environ)
    except config.ConfigError as exc:
        return _problems(exc.problems)
    _configure_logging(settings.log.level)
    try:
        if watch:
            return app.watch_records(settings, as_json)
        return app.print_records(settings, as_json)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return _reader_gone()
    except DockerUnavailable as exc:
        return _fail(str(exc), 1)


def _reader_gone() -> int:
    """The reader of stdout went away (`dockerdns records | head`): a normal end, exit 0.

    What is still buffered for stdout would fail again when Python flushes it
    at exit and print a traceback; stdout is pointed at /dev/null instead.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return 0


def _check_config(path: str) -> int:
    problems = config.check_file(path)
    if problems:
        return _problems(problems)
    print(f"{path}: ok")
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT)


def _problems(problems: list[str]) -> int:
    for problem in problems:
        _fail(problem, 2)
    return 2


def _fail(message: str, code: int) -> int:
    """Print `message` as one line on stderr; returns `code`."""
    print(f"{PROG}: {' '.join(message.splitlines())}", file=sys.stderr)
    return code


# --- Arguments ---------------------------------------------------------------


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Service-discovery DNS server for Docker containers.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_serve_options(parser)
    parser.set_defaults(command="serve", json=False, watch=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the DNS server in the foreground (the default)", allow_abbrev=False)
    _add_serve_options(serve)
    serve.set_defaults(command="serve")
    records = commands.add_parser(
        "records", help="read Docker once and print the records that would be served", allow_abbrev=False
    )
    records.add_argument("--json", action="store_true", help="print a JSON list of objects")
    records.add_argument("--watch", action="store_true",
                         help="keep following Docker and print each change as it happens (+ added, - removed)")
    _add_serve_options(records)
    records.set_defaults(command="records")
    check = commands.add_parser("check-config", help="validate a config file", allow_abbrev=False)
    check.add_argument(
        "-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
        help=f"the file to check (default: ${config.CONFIG_ENV}, else {config.DEFAULT_CONFIG})",
    )
    check.set_defaults(command="check-config")
    return parser


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    """The options of `serve` (and `records`): only those given reach `flags`, keyed by YAML key path."""
    option = parser.add_argument_group("server options").add_argument
    suppress = argparse.SUPPRESS
    option("-c", "--config", metavar="FILE", default=suppress,
           help=f"config file (default: {config.DEFAULT_CONFIG} if it exists)")
    option("--listen", metavar="HOST:PORT", action="append", default=suppress,
           help="address to answer DNS on, repeatable; [::1]:53 for IPv6, bridge:53 for Docker's bridge gateway")
    option("--domain", metavar="NAME", default=suppress, help="the zone served (default: docker)")
    option("--ttl", metavar="SECONDS", default=suppress, help="TTL of answers (default: 1)")
    option("--docker-url", dest="docker.url", metavar="URL", default=suppress,
           help="Docker Engine API (default: $DOCKER_HOST, else unix:///var/run/docker.sock)")
    option("--upstream", dest="forward.upstreams", metavar="HOST[:PORT]", action="append", default=suppress,
           help="DNS server for names outside the zone, repeatable (default: the nameservers in /etc/resolv.conf)")
    option("--forward-max-ttl", dest="forward.max_ttl", metavar="SECONDS", default=suppress,
           help="longest TTL a forwarded answer keeps; longer ones are cut to it "
                f"(default: {config.ForwardSettings().max_ttl})")
    option("--forward-cache-size", dest="forward.cache_size", metavar="BYTES", default=suppress,
           help="bytes of upstream answers kept for their TTL; 0 keeps none "
                f"(default: {config.ForwardSettings().cache_size})")
    option("--no-forward", dest="forward.enabled", action="store_const", const=False, default=suppress,
           help="refuse names outside the zone instead of forwarding them")
    option("--allow", metavar="CIDR", action="append", default=suppress,
           help="clients allowed to query, repeatable; a list given is used as written "
                "(default: loopback, private networks and every address of this host)")
    option("--external-names", dest="external_names", action="store_const", const=True, default=suppress,
           help="let containers publish names outside the zone")
    option("--http", dest="http.listen", metavar="HOST:PORT", default=suppress,
           help="serve /records, /healthz and /metrics over HTTP (default: off)")
    option("--log-level", dest="log.level", metavar="LEVEL", default=suppress,
           help="debug, info, warning or error (default: info)")
    option("--rate-limit", dest="rate_limit.responses_per_second", metavar="N", default=suppress,
           help="identical answers per second to one client /24 (IPv6 /56) before limiting; 0: off "
                f"(default: {config.RateLimitSettings().responses_per_second})")
    option("--rate-limit-slip", dest="rate_limit.slip", metavar="N", default=suppress,
           help="every N-th limited answer goes out truncated so real clients retry over TCP; 0: none "
                f"(default: {config.RateLimitSettings().slip})")
    option("--rate-limit-window", dest="rate_limit.window", metavar="SECONDS", default=suppress,
           help=f"seconds of credit a client network can save up (default: {config.RateLimitSettings().window})")
    option("--swarm-url", dest="swarm.url", metavar="URL", default=suppress,
           help="a Swarm manager's API, for the names of every service and task; off: no Swarm names "
                "(default: the --docker-url engine, when it is a manager)")
    option("--swarm-poll", dest="swarm.poll", metavar="SECONDS", default=suppress,
           help=f"seconds between two reads of the Swarm's running tasks, at least {config.MIN_SWARM_POLL:g} "
                f"(default: {config.SwarmSettings().poll:g})")
