"""The command line: ``orchestrator run|resume|status|abort|reboot|plan|history|demo|…``.

Only argument handling and exit codes live here; the work is in ``engine``. Heavy imports
(asyncssh, httpx, pydantic) happen inside the commands that need them, so ``status`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, OrchestratorError
from orchestrator.paths import (
    cached_verdict,
    config_path,
    read_config_text,
    remember_invalid,
    remember_valid,
)

if TYPE_CHECKING:
    from orchestrator.config import LoadedConfig
    from orchestrator.states import RunKind
    from orchestrator.store import Store


class Context:
    def __init__(self, config_option: str | None, debug: bool) -> None:
        self.config_path = config_path(config_option, os.environ)
        self.debug = debug

    def load(self, log_file: bool = True) -> LoadedConfig:
        """The validated config, with logging set up (``log_file``: also to the config's file)."""
        from orchestrator import logs
        from orchestrator.config import parse_config

        text = read_config_text(self.config_path)
        config = parse_config(self.config_path, text)
        remember_valid(text, os.environ, config.settings.state_dir)
        logs.setup(self.debug, config.settings.log_file if log_file else None, self.config_path)
        return config

    def state_dir(self) -> Path:
        """``state_dir`` of the config, which must be valid: the full validation (pydantic)
        runs only for a file content not yet known valid to this user, so ``status`` stays
        fast; a broken one is remembered with its problem (see ``paths.cached_verdict``)."""
        text = read_config_text(self.config_path)
        verdict = cached_verdict(text, os.environ)
        if isinstance(verdict, Path):
            return verdict
        prefix = f"{self.config_path}: "
        if isinstance(verdict, str):
            raise ConfigError(prefix + verdict)
        from orchestrator.config import parse_config

        try:
            config = parse_config(self.config_path, text)
        except ConfigError as exc:
            if str(exc).startswith(prefix):
                remember_invalid(text, os.environ, str(exc).removeprefix(prefix))
            raise
        remember_valid(text, os.environ, config.settings.state_dir)
        return config.settings.state_dir.expanduser()

    def open_store(self) -> Store | None:
        """The store for reading, or None when no run was ever made."""
        from orchestrator.store import Store

        state_dir = self.state_dir()
        try:
            return Store.open(state_dir, create=False)
        except FileNotFoundError:
            return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_option",
    metavar="PATH",
    help="Config file [default: $ORCHESTRATOR_CONFIG or /etc/lab-orchestrator/config.yaml].",
)
@click.option("--debug", is_flag=True, help="Verbose logs, and tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, config_option: str | None, debug: bool) -> None:
    """Nightly, health-gated update and rolling reboot of a NixOS homelab."""
    ctx.obj = Context(config_option, debug)


def _drive(config: LoadedConfig, start: RunKind | None, only: str | None = None) -> int:
    from orchestrator import engine
    from orchestrator.states import Phase, StateName

    final = engine.drive(config, start, only)
    if final is None:
        click.echo("nothing to resume: no run is in progress", err=True)
        return EXIT_OK
    if StateName.parse(final.state).phase is Phase.PAUSED:
        return EXIT_OK  # waiting for the maintenance window is what the owner asked for
    return EXIT_OK if final.state == Phase.DONE.value else EXIT_FAILED


@cli.command()
@click.pass_obj
def run(ctx: Context) -> int:
    """Update, deploy, then reboot every machine in order (continues a run in progress)."""
    from orchestrator.states import RunKind

    return _drive(ctx.load(), RunKind.NIGHTLY)


@cli.command()
@click.pass_obj
def resume(ctx: Context) -> int:
    """Finish an interrupted run (the boot unit calls this); no-op when there is none."""
    return _drive(ctx.load(), None)


@cli.command()
@click.argument("machine")
@click.pass_obj
def reboot(ctx: Context, machine: str) -> int:
    """Reboot one MACHINE and wait until it passes the health gate."""
    from orchestrator.states import RunKind

    return _drive(ctx.load(), RunKind.REBOOT, machine)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(ctx: Context, as_json: bool) -> int:
    """The current or last run: state, per-machine progress, boot ids, errors."""
    from orchestrator import report

    store = ctx.open_store()
    with store or contextlib.nullcontext():
        run = store.latest_run() if store else None
        # "since when" of a run in progress: when it entered its state (a finished run needs
        # no steps read, its end is finished_at).
        steps = store.steps(run.run_id) if store and run and not run.finished else []
    since = report.current_since(run, steps) if run else None
    if as_json:
        click.echo(report.dumps(report.status_json(run, since)))
    else:
        report.status_text(run, since)
    return EXIT_OK


@cli.command()
@click.option(
    "-n",
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many runs (at least 1).",
)
@click.pass_obj
def history(ctx: Context, limit: int) -> int:
    """Past runs, newest first, one line each (a long error cut to the terminal's width)."""
    from orchestrator import report

    store = ctx.open_store()
    with store or contextlib.nullcontext():
        runs = store.run_heads(limit) if store else []
    width = report.terminal_width(os.environ, sys.stdout)
    for line in report.history_lines(runs, width) or ["no runs yet"]:
        click.echo(line)
    return EXIT_OK


@cli.command()
@click.pass_obj
def abort(ctx: Context) -> int:
    """Stop the run in progress at the next safe point; it ends `aborted`."""
    from orchestrator import engine, logs

    logs.setup(ctx.debug)
    click.echo(engine.abort(ctx.config_path))
    return EXIT_OK


@cli.command()
@click.pass_obj
def plan(ctx: Context) -> int:
    """Show what a run would do and probe every machine now, changing nothing."""
    import asyncio

    from orchestrator.engine import plan_probe
    from orchestrator.process import display
    from orchestrator.states import RunKind, work_states

    config = ctx.load(log_file=False)  # "changes nothing": not even an empty log file
    settings = config.settings
    click.echo(f"config: {config.path}")
    click.echo(
        f"in {config.flake_dir}: update `{display(settings.update.command)}`, "
        f"deploy `{display(settings.deploy.command)}`"
    )
    per_machine = settings.deploy.mode == "per-machine"
    if per_machine:
        click.echo(f"deploy per machine: `{display(settings.deploy.machine_command)}`")
    steps = work_states(RunKind.NIGHTLY, config.waves.names, per_machine_deploy=per_machine)
    click.echo("steps: " + " -> ".join([*steps, "done"]))
    for wave, group in zip(config.waves.names, config.waves.groups, strict=True):
        if len(group) > 1:
            click.echo(f"{wave}: {', '.join(group)} (rebooted and gated together)")
    reboot = settings.reboot
    click.echo(
        f"gate: {reboot.stable_passes} passes {reboot.poll_interval:g}s apart, "
        f"timeout {reboot.timeout:g}s per machine, settle {reboot.settle:g}s"
    )
    click.echo(
        f"reboot.when: {reboot.when} (if_changed: {', '.join(reboot.if_changed)}); "
        f"on_failure: {settings.on_failure}; boot_once: {'yes' if reboot.boot_once else 'no'}"
    )
    rounds, facts = asyncio.run(plan_probe(config))
    ready = True
    for name, result in rounds.items():
        verdict = "ready" if result.passed else f"NOT READY: {result.first_failure}"
        ready = ready and result.passed
        click.echo(f"  {name}: {verdict}")
        if name in facts:
            click.echo(f"    {reboot_plan(facts[name], reboot.when, reboot.if_changed)}")
    if any(name in facts for name in rounds):
        when = "before each machine's deploy" if per_machine else "before the deploy step"
        click.echo(f"(generations as they are now, {when})")
    return EXIT_OK if ready else EXIT_FAILED


def reboot_plan(facts: object, when: str, if_changed: Sequence[str]) -> str:
    """What a run would do with one machine, from its generation facts as read now."""
    from orchestrator import generations

    if isinstance(facts, str):
        return f"generation unreadable ({facts}): rebooted"
    if isinstance(facts, generations.NotNixos):
        return f"not NixOS ({facts.reason}): rebooted"
    assert isinstance(facts, generations.GenerationFacts)
    need = generations.reboot_need(facts, if_changed)
    if need.needed:
        return f"reboot: {need.reason}"
    if when == "always":
        return f"reboot (reboot.when is always): {need.reason}"
    return f"skip: {need.reason}"


@cli.command("validate-config")
@click.pass_obj
def validate_config(ctx: Context) -> int:
    """Check the config file and exit (0: valid, 2: one line saying what is wrong)."""
    from orchestrator.config import parse_config

    text = read_config_text(ctx.config_path)
    config = parse_config(ctx.config_path, text)
    remember_valid(text, os.environ, config.settings.state_dir)
    order = " -> ".join(" + ".join(group) for group in config.waves.groups)
    click.echo(f"{config.path}: ok ({order})")
    return EXIT_OK


@cli.command("notify-test")
@click.pass_obj
def notify_test(ctx: Context) -> int:
    """Send a test notification to every `notify` URL; one line per URL (URLs masked)."""
    from orchestrator import notify

    config = ctx.load(log_file=False)
    deliveries = notify.notify_test(config.settings.notify)
    for delivery in deliveries:
        outcome = "sent" if delivery.ok else f"failed: {delivery.detail}"
        click.echo(f"{delivery.url}: {outcome}")
    return EXIT_OK if all(delivery.ok for delivery in deliveries) else EXIT_FAILED


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the demo directory afterwards.")
@click.option(
    "--break",
    "broken",
    metavar="MACHINE",
    help="Deploy a broken generation to MACHINE of the demo lab: its gate fails, it is "
    "rolled back, and the run ends aborted there.",
)
@click.pass_obj
def demo(ctx: Context, keep: bool, broken: str | None) -> int:
    """Run a whole nightly run against a simulated lab on this machine (no root needed).

    Exit 0 when the run ended as the demo means it to: done, or with --break aborted at
    that machine after it was rolled back and proven healthy again."""
    from orchestrator.demo import SEED_MACHINES, run_demo  # the only import of the simulated lab

    if broken is not None and broken not in SEED_MACHINES:
        raise click.BadParameter(
            f"{broken!r} is not a machine of the demo lab ({', '.join(SEED_MACHINES)})",
            ctx=click.get_current_context(),
            param_hint="'--break'",
        )
    return run_demo(debug=ctx.debug, keep=keep, broken=broken)


@cli.command("config-reference")
@click.option("--example", is_flag=True, help="Print the example config (YAML) instead.")
@click.option(
    "--write",
    "write_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write DIR/REFERENCE.md and DIR/lab.example.yaml, and print their paths.",
)
def config_reference(example: bool, write_dir: str | None) -> int:
    """Print the config reference (Markdown), generated from the schema; needs no config file."""
    from pathlib import Path

    from orchestrator import reference

    if write_dir is None:
        text = reference.example_yaml() if example else reference.reference_markdown()
        click.echo(text, nl=False)
        return EXIT_OK
    if example:
        raise click.UsageError("--write writes both files; leave out --example")
    directory = Path(write_dir)
    for name, text in reference.outputs():
        path = directory / name
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OrchestratorError(f"{path}: cannot write: {exc}") from None
        click.echo(str(path))
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code: Any = cli.main(args=args, prog_name="orchestrator", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        code = 130
    except click.UsageError as exc:
        # One line, like every other error: `error: -n/--limit: 0 is not in the range x>=1.`
        command = f" {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else ""
        message = " ".join(exc.format_message().split())
        click.echo(f"error: {message} (see: orchestrator{command} --help)", err=True)
        code = EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except OrchestratorError as exc:
        if debug:  # the traceback, and still the error's own exit code
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
