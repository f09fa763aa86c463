"""Every command, every kind of bad input: one message, exit 2, no traceback (tests/bad_inputs.py)."""

import pytest
from bad_inputs import MESSAGES, bad_input_cases

from latentdlm.cli import main


@pytest.fixture(scope="module")
def cases(autoencoder, pipeline_dir, tmp_path_factory):
    return bad_input_cases(autoencoder, pipeline_dir, tmp_path_factory.mktemp("bad"))


def test_there_are_enough_cases(cases):
    assert len(cases) >= 40


def test_every_bad_input_is_one_message_and_exit_2(cases, capsys):
    failures = []
    for name, argv in cases.items():
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own refusals (a number that is not a number)
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - collected, so that one run lists every case that fails
            code = f"{type(exc).__name__}: {exc}"
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error:" in line]
        if code != 2 or "Traceback" in err or not lines:
            failures.append(f"{name}: exit {code}, stderr tail: {err[-300:]!r}")
    assert not failures, "\n".join(failures)


def test_a_cut_short_or_wrong_typed_saved_config_is_one_message_naming_the_file_and_key(cases, capsys):
    for name, parts in MESSAGES.items():
        assert main(cases[name]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert all(part in err for part in parts), (name, err)
