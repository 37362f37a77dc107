"""The Python stand-in for pulumi-command's plugin (tests/support/command_provider).

Two layers:

- without the engine: its Check and Diff (the framework's defaults, each rule
  cited in `inputs`), how secrets and unknowns reach the outputs, and running
  commands (`runner`: interpreter, directory, environment, stdin, log lines,
  pulumi-command's error text);
- with the real Pulumi engine (the CLI built by scripts/pulumi-toolchain.sh):
  small inline programs through the Automation API, the plugin found on PATH:
  create runs once, its lines show during `up`, a second `up` does nothing, a
  changed trigger replaces, a changed `create` updates, a failing command fails
  `up` with its output, `destroy` runs `delete`, and a secret in `environment`
  leaves `stdout` plain, as pulumi-command 1.2.1 does.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command
import pytest
from pulumi import automation as auto
from pulumi.provider.experimental.property_value import Computed, PropertyValue

from tests.support.command_provider import inputs, runner
from tests.support.command_provider.inputs import Kind
from tests.support.command_provider.provider import (
    FRAMEWORK_VERSION_KEY,
    CommandProvider,
    mark,
)
from tests.support.command_provider.runner import BaseInputs, CommandError, Outputs
from tests.support.command_provider.values import (
    UNKNOWN,
    entries,
    from_wire,
    items,
    plain,
    to_wire,
    wrap,
)
from tests.support.docker_engine import REPO_ROOT
from tests.support.pulumi_engine import toolchain_bin

PLUGIN_BIN = REPO_ROOT / "tests" / "support" / "command_provider" / "bin"
URN = "urn:pulumi:dev::p::command:local:Command::step"
SECRET = "s3cret-value-42"


def props(**values: Any) -> dict[str, PropertyValue]:
    return {k: wrap(v) for k, v in values.items()}


def secret(value: Any) -> PropertyValue:
    return wrap(value).with_secret(True)


UNKNOWN_VALUE = PropertyValue(Computed())


# -- wire values --------------------------------------------------------------------


def test_unknowns_and_nulls_are_read_as_the_framework_reads_them():
    wire = to_wire(
        {
            "create": PropertyValue("true"),
            "dir": PropertyValue(None),
            "environment": PropertyValue({"A": PropertyValue(None), "B": UNKNOWN_VALUE}),
            "triggers": PropertyValue([PropertyValue(None), UNKNOWN_VALUE]),
        }
    )
    assert wire.fields["environment"].struct_value.fields["B"].string_value == UNKNOWN
    read = from_wire(wire)
    assert "dir" not in read  # SkipNulls drops null entries...
    assert set(entries(read["environment"])) == {"B"}  # ...at every level
    assert items(read["triggers"])[0].value is None  # ...but not array elements
    assert isinstance(entries(read["environment"])["B"].value, Computed)


# -- Check -------------------------------------------------------------------------


def test_check_hands_the_inputs_back_unchanged():
    news = props(
        create="echo hi",
        delete="echo bye",
        dir="/tmp",
        environment={"A": "1"},
        triggers=["x", 1, True, {"k": "v"}],
        interpreter=["/bin/bash", "-c"],
        logging="stderr",
        addPreviousOutputInEnv=False,
        stdin="",
    )
    news["environment"] = PropertyValue({"TOKEN": secret("t")})
    checked, failures = inputs.check(news)
    assert failures == [] and checked == news


def test_check_lets_unknowns_through():
    news = {"create": UNKNOWN_VALUE, "environment": PropertyValue({"A": UNKNOWN_VALUE})}
    assert inputs.check(news) == (news, [])


def test_check_fails_what_does_not_decode_into_the_inputs_struct():
    _, failures = inputs.check(
        props(
            create=3,
            environment={"A": 1},
            interpreter="/bin/sh",
            addPreviousOutputInEnv="yes",
            crate="echo typo",
        )
    )
    reasons = {f.property: f.reason for f in failures}
    assert reasons == {
        "create": "Field 'create' on 'local.CommandInputs' must be a 'string'; "
        "got 'float64' instead",
        "environment[A] value": "Field 'environment[A] value' on 'local.CommandInputs' must be a "
        "'string'; got 'float64' instead",
        "interpreter": "Field 'interpreter' on 'local.CommandInputs' must be a '[]string'; "
        "got 'string' instead",
        "addPreviousOutputInEnv": "Field 'addPreviousOutputInEnv' on 'local.CommandInputs' must "
        "be a 'bool'; got 'string' instead",
        "crate": "Unrecognized field 'crate' on 'local.CommandInputs'",
    }


def test_check_refuses_asset_and_archive_paths_it_does_not_model():
    _, failures = inputs.check(props(create="true", assetPaths=["*.txt"]))
    assert [f.property for f in failures] == ["assetPaths"]


# -- Diff --------------------------------------------------------------------------


def diff(olds: dict[str, PropertyValue], news: dict[str, PropertyValue], **kw: Any) -> inputs.Diff:
    state = {**olds, "stdout": PropertyValue("out"), "stderr": PropertyValue("")}
    return inputs.diff(olds, state, news, **kw)


def test_no_change_is_no_diff():
    olds = props(create="a", triggers=["t"], environment={"A": "1"})
    result = diff(olds, dict(olds))
    assert result.changes is False and result.detailed == {}


def test_a_changed_create_or_delete_is_an_update():
    olds = props(create="a", delete="d")
    result = diff(olds, props(create="b", delete="e"))
    assert result.changes and result.replaces == []
    assert result.detailed == {"create": Kind.UPDATE, "delete": Kind.UPDATE}


def test_a_changed_trigger_element_is_an_update_from_the_provider():
    """The path is `triggers[0]`, which is not a top-level input: the framework
    does not make it a replace. The SDK's `replace_on_changes=["triggers[*]"]`
    makes the engine replace (see the engine test below)."""
    result = diff(props(create="a", triggers=["id1"]), props(create="a", triggers=["id2"]))
    assert result.detailed == {"triggers[0]": Kind.UPDATE}
    assert result.replaces == [] and result.diffs == ["triggers"]


def test_the_sdk_asks_the_engine_to_replace_on_any_trigger_element():
    source = Path(command.local.command.__file__).read_text()
    assert 'replace_on_changes=["triggers[*]"]' in source


def test_triggers_appearing_or_going_is_a_replace_from_the_provider():
    added = diff(props(create="a"), props(create="a", triggers=["t"]))
    assert added.detailed == {"triggers": Kind.ADD_REPLACE} and added.replaces == ["triggers"]
    gone = diff(props(create="a", triggers=["t"]), props(create="a"))
    assert gone.detailed == {"triggers": Kind.DELETE_REPLACE}
    longer = diff(props(triggers=["t"]), props(triggers=["t", "u"]))
    assert longer.detailed == {"triggers[1]": Kind.ADD}


def test_environment_changes_are_reported_per_key():
    result = diff(
        props(environment={"A": "1", "B": "2", "my.key": "x"}),
        props(environment={"A": "1", "B": "3", "C": "4"}),
    )
    assert result.detailed == {
        "environment.B": Kind.UPDATE,
        "environment.C": Kind.ADD,
        'environment["my.key"]': Kind.DELETE,
    }
    assert result.diffs == ["environment"] and not result.replaces


def test_a_value_turning_secret_is_a_change_and_secrets_are_compared_whole():
    olds = props(environment={"T": "v"})
    turned = diff(olds, {"environment": PropertyValue({"T": secret("v")})})
    assert turned.detailed == {"environment.T": Kind.UPDATE}
    same = {"environment": secret({"T": "v", "U": "w"})}
    assert diff(same, dict(same)).changes is False
    other = {"environment": secret({"T": "v", "U": "x"})}
    assert diff(same, other).detailed == {"environment": Kind.UPDATE}


def test_unknown_new_values_are_changes():
    result = diff(props(create="a"), {"create": UNKNOWN_VALUE})
    assert result.detailed == {"create": Kind.UPDATE}


def test_ignored_keys_come_from_the_state_and_version_is_dropped():
    olds = props(create="a", delete="d")
    news = {**props(create="b", delete="d"), "version": PropertyValue("1.2.1")}
    news["__internal"] = PropertyValue("x")
    assert diff(olds, news, ignore_changes=["create"]).changes is False


def test_without_old_inputs_the_state_stands_for_them():
    state = {**props(create="a"), "stdout": PropertyValue("out"), "stderr": PropertyValue("")}
    result = inputs.diff(None, state, props(create="a"))
    assert result.changes is False


# -- secrets and unknowns in the outputs ---------------------------------------------


def test_a_secret_in_the_environment_leaves_stdout_plain():
    news = {"create": PropertyValue("echo $T"), "environment": PropertyValue({"T": secret("x")})}
    out = {**news, "stdout": PropertyValue("x"), "stderr": PropertyValue("")}
    marked = mark(out, news, None, is_create=True, is_preview=False)
    assert entries(marked["environment"])["T"].is_secret
    assert not marked["stdout"].is_secret and not marked["stderr"].is_secret
    whole = {"create": secret("echo x")}
    marked = mark(
        {**whole, "stdout": PropertyValue("x")}, whole, None, is_create=True, is_preview=False
    )
    assert marked["create"].is_secret and not marked["stdout"].is_secret


def test_a_preview_of_a_create_knows_the_inputs_not_the_output():
    news = props(create="echo hi")
    out = {**news, "stdout": PropertyValue(""), "stderr": PropertyValue("")}
    marked = mark(out, news, None, is_create=True, is_preview=True)
    assert marked["create"] == PropertyValue("echo hi")
    assert isinstance(marked["stdout"].value, Computed)


def test_a_preview_of_an_update_knows_the_old_output_only_if_no_input_changed():
    olds = {
        **props(create="a", dir="/x"),
        "stdout": PropertyValue("old"),
        "stderr": PropertyValue(""),
    }
    unchanged = props(create="a", dir="/x")
    out = {**unchanged, "stdout": PropertyValue("old"), "stderr": PropertyValue("")}
    assert mark(out, unchanged, olds, is_create=False, is_preview=True)["stdout"].value == "old"
    changed = props(create="b", dir="/x")
    out = {**changed, "stdout": PropertyValue("old"), "stderr": PropertyValue("")}
    assert isinstance(
        mark(out, changed, olds, is_create=False, is_preview=True)["stdout"].value, Computed
    )


# -- running commands ----------------------------------------------------------------


def run(cmd: str, base: BaseInputs | None = None, previous: Outputs | None = None, **kw: Any):
    lines: list[str] = []

    async def log(line: str) -> None:
        lines.append(line)

    out = asyncio.run(runner.run(cmd, base or BaseInputs(), previous or Outputs(), log, **kw))
    return out, lines


def test_a_command_runs_in_sh_with_its_environment_and_one_newline_trimmed(tmp_path):
    base = BaseInputs(dir=str(tmp_path), environment={"GREETING": "hi"})
    out, lines = run('echo "$0 $GREETING"; pwd; echo; echo warn >&2', base)
    assert out.stdout == f"/bin/sh hi\n{tmp_path}\n"  # only the last newline goes
    assert out.stderr == "warn"
    assert sorted(lines) == sorted(["/bin/sh hi", str(tmp_path), "", "warn"])


def test_the_provider_environment_is_inherited_and_overridden(monkeypatch):
    monkeypatch.setenv("FROM_PROVIDER", "p")
    monkeypatch.setenv("OVERRIDDEN", "p")
    out, _ = run(
        'echo "$FROM_PROVIDER $OVERRIDDEN"', BaseInputs(environment={"OVERRIDDEN": "mine"})
    )
    assert out.stdout == "p mine"


def test_the_previous_output_is_in_the_environment_unless_turned_off():
    previous = Outputs(stdout="before", stderr="")
    out, _ = run('echo "${PULUMI_COMMAND_STDOUT}|${PULUMI_COMMAND_STDERR-unset}"', None, previous)
    assert out.stdout == "before|unset"  # an empty stream is not set
    out, _ = run(
        'echo "${PULUMI_COMMAND_STDOUT-unset}"',
        BaseInputs(add_previous_output_in_env=False),
        previous,
    )
    assert out.stdout == "unset"


def test_interpreter_stdin_and_the_working_directory_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, _ = run("import os; print(os.getcwd())", BaseInputs(interpreter=(sys.executable, "-c")))
    assert out.stdout == str(tmp_path)
    out, _ = run("cat", BaseInputs(stdin="fed\n"))
    assert out.stdout == "fed"
    out, _ = run("cat")
    assert out.stdout == ""


def test_logging_selects_the_streams_that_are_logged():
    script = "echo out; echo err >&2"
    assert run(script, BaseInputs(logging="stdout"))[1] == ["out"]
    assert run(script, BaseInputs(logging="stderr"))[1] == ["err"]
    assert run(script, BaseInputs(logging="none"))[1] == []
    out, lines = run("printf 'a\\r\\nb'", BaseInputs(logging="stdoutAndStderr"))
    assert lines == ["a", "b"] and out.stdout == "a\r\nb"


def test_a_failing_command_fails_with_its_output_in_pulumi_commands_words():
    with pytest.raises(CommandError) as failed:
        run('echo "some output"; echo "the cause" >&2; exit 3')
    assert str(failed.value) == (
        'exit status 3: running "echo \\"some output\\"; echo \\"the cause\\" >&2; exit 3":\n'
        "some output\nthe cause\n"
    )


def test_commands_that_cannot_start_fail_as_go_reports_it(tmp_path):
    with pytest.raises(
        CommandError, match=r'^chdir /nonexistent/x: no such file or directory: running "true":\n$'
    ):
        run("true", BaseInputs(dir="/nonexistent/x"))
    with pytest.raises(CommandError, match=r"^fork/exec /bin/nope: no such file or directory"):
        run("true", BaseInputs(interpreter=("/bin/nope",)))
    with pytest.raises(
        CommandError, match=r'^exec: "nope-shell": executable file not found in \$PATH'
    ):
        run("true", BaseInputs(interpreter=("nope-shell",)))


def test_a_deadline_kills_the_command():
    """Only the process itself is killed; as in Go, the output is read until every
    holder of the pipes is gone, so the command `exec`s its last step here."""
    with pytest.raises(
        CommandError, match=r'^signal: killed: running "echo started; exec sleep 30":\nstarted\n$'
    ):
        run("echo started; exec sleep 30", timeout=0.5)


# -- the provider's calls ------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    async def __call__(self, urn: str, line: str) -> None:
        self.lines.append((urn, line))


def test_create_update_delete_and_read(tmp_path):
    log = Recorder()
    provider = CommandProvider(log=log)
    trace = tmp_path / "trace"
    news = props(
        create=f'echo "create prev=[$PULUMI_COMMAND_STDOUT]" | tee -a {trace}',
        delete=f'echo "delete prev=[$PULUMI_COMMAND_STDOUT]" >> {trace}',
    )
    preview = asyncio.run(provider.create(URN, news, preview=True))
    assert not trace.exists() and isinstance(preview.properties["stdout"].value, Computed)

    made = asyncio.run(provider.create(URN, news, preview=False))
    assert made.resource_id.startswith("step") and len(made.resource_id) == len("step") + 8
    state = made.properties
    assert plain(state["stdout"]) == "create prev=[]" and plain(state["stderr"]) == ""
    assert log.lines == [(URN, "create prev=[]")]
    assert asyncio.run(provider.update(URN, state, news, [], preview=True)) == state

    # Update without `update`: `create` again, with the previous stdout.
    changed = {**news, "dir": PropertyValue(str(tmp_path))}
    state = asyncio.run(provider.update(URN, state, changed, [], preview=False))
    assert plain(state["stdout"]) == "create prev=[create prev=[]]"
    with_update = {**changed, "update": PropertyValue("echo updated")}
    state = asyncio.run(provider.update(URN, state, with_update, [], preview=False))
    assert plain(state["stdout"]) == "updated"

    assert provider.read(URN, made.resource_id, state, with_update) == (
        made.resource_id,
        state,
        with_update,
    )
    asyncio.run(provider.delete(URN, state))
    assert trace.read_text().splitlines() == [
        "create prev=[]",
        "create prev=[create prev=[]]",
        "delete prev=[updated]",
    ]


def test_no_create_runs_nothing_and_no_delete_deletes_nothing():
    provider = CommandProvider()
    made = asyncio.run(provider.create(URN, props(dir="/"), preview=False))
    assert plain(made.properties["stdout"]) == "" and plain(made.properties["stderr"]) == ""
    asyncio.run(provider.delete(URN, made.properties))


def test_provider_config_carries_the_framework_version():
    provider = CommandProvider()
    checked = provider.check_config(props(version="1.2.1"))
    assert plain(checked[FRAMEWORK_VERSION_KEY]) == "1.2.0"


# -- the real Pulumi engine ----------------------------------------------------------


class Engine:
    """A stack on a local backend in tmp, the stand-in plugin on PATH, and an
    inline program built from `self.spec` at every operation."""

    def __init__(self, tmp: Path, program: Callable[[dict[str, Any]], None]) -> None:
        self.tmp = tmp
        self.spec: dict[str, Any] = {}
        self.lines: list[str] = []
        (tmp / "state").mkdir()
        (tmp / "work").mkdir()
        env = {
            "PULUMI_HOME": str(tmp / "home"),
            "PULUMI_BACKEND_URL": (tmp / "state").as_uri(),
            "PULUMI_CONFIG_PASSPHRASE": "test",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PATH": f"{PLUGIN_BIN}:{os.environ.get('PATH', '')}",
            "VLLM_NGINX_PROVIDER_PYTHON": sys.executable,
        }
        self.stack = auto.create_or_select_stack(
            "test",
            project_name="command-e2e",
            program=lambda: program(self.spec),
            opts=auto.LocalWorkspaceOptions(
                work_dir=str(tmp / "work"),
                pulumi_home=env["PULUMI_HOME"],
                env_vars=env,
                pulumi_command=auto.PulumiCommand(root=str(toolchain_bin().parent)),
            ),
        )

    def up(self) -> auto.UpResult:
        self.lines = []
        return self.stack.up(on_output=self.lines.append)

    def state(self) -> dict[str, Any]:
        (path,) = (self.tmp / "state").glob(".pulumi/stacks/command-e2e/test.json")
        state: dict[str, Any] = json.loads(path.read_text())
        return state

    def command_states(self) -> list[dict[str, Any]]:
        resources = self.state()["checkpoint"]["latest"].get("resources", [])
        return [r for r in resources if r["type"] == "command:local:Command"]


@pytest.fixture
def engine_for(tmp_path) -> Iterator[Callable[[Callable[[dict[str, Any]], None]], Engine]]:
    toolchain_bin()  # fails in CI, skips elsewhere, without the CLI
    made: list[Engine] = []

    def make(program: Callable[[dict[str, Any]], None]) -> Engine:
        made.append(Engine(tmp_path, program))
        return made[-1]

    yield make
    for engine in made:
        engine.stack.workspace.remove_stack("test", force=True)


def _trace_program(spec: dict[str, Any]) -> None:
    """One command whose create and delete append to a trace file, and an export."""
    trace = spec["trace"]
    prev = '$(printf %s "$PULUMI_COMMAND_STDOUT" | tr "\\n" "|")'  # one line in the trace
    step = command.local.Command(
        "step",
        create=f'echo "create {spec["create"]} prev=[{prev}]" | tee -a {trace}; '
        f"sleep 0.2; echo second line; echo to stderr >&2",
        delete=f'echo "delete prev=[{prev}]" >> {trace}',
        dir=spec["dir"],
        triggers=spec["triggers"],
        opts=pulumi.ResourceOptions(delete_before_replace=spec.get("dbr", False)),
    )
    pulumi.export("stdout", step.stdout)


def _trace(engine: Engine) -> list[str]:
    path = Path(engine.spec["trace"])
    return path.read_text().splitlines() if path.exists() else []


def _trace_engine(engine_for, tmp_path) -> Engine:
    engine: Engine = engine_for(_trace_program)
    engine.spec.update(
        trace=str(tmp_path / "trace"), create="v1", dir=str(tmp_path), triggers=["t1"]
    )
    return engine


def test_engine_create_runs_once_and_its_lines_show_during_up(engine_for, tmp_path):
    engine = _trace_engine(engine_for, tmp_path)
    engine.stack.preview()
    assert _trace(engine) == []  # nothing runs in a preview

    up = engine.up()
    assert up.summary.resource_changes == {"create": 2}
    assert up.outputs["stdout"].value == "create v1 prev=[]\nsecond line"
    assert not up.outputs["stdout"].secret
    assert _trace(engine) == ["create v1 prev=[]"]
    # Each line is an ephemeral message on the resource: the non-interactive
    # display prints the resource's row with it (pulumi pkg v3.274.1
    # backend/display/jsonmessage.go:224-234); it is not kept as a diagnostic.
    for line in ("create v1 prev=[]", "second line", "to stderr"):
        assert any("command:local:Command step" in o and line in o for o in engine.lines), line
    (state,) = engine.command_states()
    assert state["outputs"]["stderr"] == "to stderr" and state["id"].startswith("step")

    again = engine.up()
    assert again.summary.resource_changes == {"same": 2}
    engine.stack.preview(expect_no_changes=True)
    engine.stack.refresh(expect_no_changes=True)  # Read hands the state back
    assert _trace(engine) == ["create v1 prev=[]"]


def test_engine_changed_create_is_an_update_that_runs_create_again(engine_for, tmp_path):
    engine = _trace_engine(engine_for, tmp_path)
    engine.up()
    engine.spec["create"] = "v2"
    preview = engine.stack.preview()
    assert preview.change_summary == {"update": 1, "same": 1}
    assert _trace(engine) == ["create v1 prev=[]"]
    up = engine.up()
    assert up.summary.resource_changes == {"update": 1, "same": 1}
    assert _trace(engine) == ["create v1 prev=[]", "create v2 prev=[create v1 prev=[]|second line]"]


def test_engine_changed_trigger_replaces_create_first_unless_delete_before_replace(
    engine_for, tmp_path
):
    engine = _trace_engine(engine_for, tmp_path)
    engine.up()
    engine.spec["triggers"] = ["t2"]
    up = engine.up()
    assert up.summary.resource_changes == {"replace": 1, "same": 1}
    # The new one's create, then the old one's delete, which sees the old stdout.
    assert _trace(engine) == [
        "create v1 prev=[]",
        "create v1 prev=[]",
        "delete prev=[create v1 prev=[]|second line]",
    ]
    engine.spec.update(triggers=["t3"], dbr=True)
    engine.up()
    assert _trace(engine)[3:] == [
        "delete prev=[create v1 prev=[]|second line]",
        "create v1 prev=[]",
    ]


def test_engine_destroy_runs_delete(engine_for, tmp_path):
    engine = _trace_engine(engine_for, tmp_path)
    engine.up()
    engine.stack.destroy()
    assert _trace(engine)[-1] == "delete prev=[create v1 prev=[]|second line]"
    assert engine.command_states() == []


def test_engine_failing_create_fails_up_with_the_commands_output(engine_for, tmp_path):
    def program(spec: dict[str, Any]) -> None:
        command.local.Command(
            "broken", create='echo "partial work"; echo "the reason" >&2; exit 3', dir=spec["dir"]
        )

    engine = engine_for(program)
    engine.spec["dir"] = str(tmp_path)
    with pytest.raises(auto.CommandError) as failed:
        engine.up()
    text = str(failed.value)
    assert (
        'exit status 3: running "echo \\"partial work\\"; echo \\"the reason\\" >&2; exit 3"'
        in text
    )
    assert "partial work" in text and "the reason" in text
    assert engine.command_states() == []  # no partial state: nothing to delete later


def test_engine_secret_environment_keeps_stdout_plain_unless_the_program_says(engine_for, tmp_path):
    """pulumi-command 1.2.1: secretness flows only to the output of the same name,
    so `environment` stays secret and `stdout` does not; the project's steps
    that see secrets add `additional_secret_outputs` (components/deployment/pool.py)."""

    def program(spec: dict[str, Any]) -> None:
        token = pulumi.Output.secret(SECRET)
        for name, extra in (("plain", []), ("marked", ["stdout", "stderr"])):
            step = command.local.Command(
                name,
                create='echo "token=$TOKEN"',
                dir=spec["dir"],
                environment={"TOKEN": token, "OTHER": "visible"},
                opts=pulumi.ResourceOptions(additional_secret_outputs=extra),
            )
            pulumi.export(f"{name}_stdout", step.stdout)
            pulumi.export(f"{name}_environment", step.environment)

    engine = engine_for(program)
    engine.spec["dir"] = str(tmp_path)
    up = engine.up()
    assert up.outputs["plain_stdout"].value == f"token={SECRET}"
    assert not up.outputs["plain_stdout"].secret
    assert up.outputs["plain_environment"].secret
    assert up.outputs["marked_stdout"].secret
    by_name = {s["urn"].split("::")[-1]: s for s in engine.command_states()}
    plain_state, marked_state = by_name["plain"], by_name["marked"]
    assert plain_state["outputs"]["stdout"] == f"token={SECRET}"  # in clear in the state
    token = plain_state["outputs"]["environment"]["TOKEN"]
    assert isinstance(token, dict) and "ciphertext" in token  # only the secret entry...
    assert plain_state["outputs"]["environment"]["OTHER"] == "visible"  # ...is encrypted
    assert "ciphertext" in marked_state["outputs"]["stdout"]
    assert SECRET not in json.dumps(marked_state)
    # Logged lines go out as the command wrote them, and the engine prints them
    # as they are: a secret a command prints shows during `up` unless its
    # `logging` leaves that stream out.
    assert any(f"token={SECRET}" in line for line in engine.lines)
