"""A third-party package adds an ``onestep`` subcommand through the hook ``onestep_commands``,
with no change to the core; a failing command hook is named and the core's commands stay."""
from onestep import cli
from onestep.registry import Registry

from test_thirdparty_plugin_errors import install

COMMAND = '''
from onestep.errors import OnestepError
from onestep.hookspecs import hookimpl

def cmd_greet(args):
    if not args.name:
        raise OnestepError("--name: expected a non-empty name")
    print(f"hello {args.name} from a plugin")
    return 0

@hookimpl
def onestep_commands(subparsers):
    p = subparsers.add_parser("greet", help="say hello")
    p.add_argument("--name", default="")
    p.set_defaults(func=cmd_greet)
'''


def test_a_plugin_adds_a_subcommand_that_runs_and_reports_errors_like_the_core(tmp_path, monkeypatch, capsys):
    install(tmp_path, "onestep-greet", "greet", "onestep_greet_t1", COMMAND)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["greet", "--name", "ada"]) == 0
    assert capsys.readouterr().out.strip() == "hello ada from a plugin"
    assert cli.main(["greet"]) == 2
    assert capsys.readouterr().err.strip() == "onestep: error: --name: expected a non-empty name"


def test_a_failing_command_hook_is_named_and_the_core_commands_stay(tmp_path, monkeypatch, capsys):
    install(tmp_path, "onestep-bad-command", "bad-command", "onestep_bad_command_t2",
            COMMAND.replace('p = subparsers', 'raise RuntimeError("no parser today")\n    p = subparsers'))
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry.discover()
    parser = cli.build_parser(reg)
    assert "onestep_commands() raised RuntimeError: no parser today" in reg.broken["bad-command"]
    assert parser.parse_args(["plugins"]).func is cli.cmd_plugins
