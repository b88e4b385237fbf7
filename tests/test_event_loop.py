"""runtime.event_loop: uvloop when it is there, the standard loop when not, an error naming the
setting when uvloop is required and missing."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

from bridge.__main__ import main
from bridge.event_loop import EventLoopUnavailable, choose_event_loop

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _loop_class(factory: object) -> str:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
        return runner.run(which())


def test_asyncio_is_the_standard_loop() -> None:
    factory, name = choose_event_loop("asyncio")
    assert factory is None and name == "asyncio"
    assert _loop_class(factory).startswith("asyncio")


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (pip extra [fast])")
def test_auto_and_uvloop_run_on_uvloop_when_installed() -> None:
    for choice in ("auto", "uvloop"):
        factory, name = choose_event_loop(choice)
        assert name.startswith("uvloop")
        assert _loop_class(factory).startswith("uvloop")


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    factory, name = choose_event_loop("auto")
    assert factory is None and name == "asyncio (uvloop is not installed)"
    with pytest.raises(EventLoopUnavailable, match=r"runtime\.event_loop: uvloop is not"):
        choose_event_loop("uvloop")
    config = tmp_path / "bridge.toml"
    config.write_text("[runtime]\nevent_loop = 'uvloop'\n", encoding="utf-8")
    assert main(["check-config", str(config)]) == 2
    assert "runtime.event_loop: uvloop is not installed" in capsys.readouterr().err
    assert main(["run", "--config", str(config)]) == 2  # refuses at once, nothing started
    assert "runtime.event_loop" in capsys.readouterr().err
