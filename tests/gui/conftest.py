"""GUI tests run without a display: Qt's offscreen platform, chosen before Qt starts."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from gui_settings import FAST_RIG  # noqa: E402

from rig.config import load_rig_config  # noqa: E402


@pytest.fixture
def fast_config(tmp_path):
    return load_rig_config(
        "sim-galvo", {**FAST_RIG, "recording.out_dir": str(tmp_path / "sessions")}
    )


@pytest.fixture
def make_window(qtbot, fast_config):
    """Shown main windows on the fast rig, closed at teardown (which stops any run). The
    fixture holds them: qtbot keeps only weak references, and a window collected without
    closing would leave its experiment running."""
    from rig.gui.main_window import MainWindow

    windows = []

    def make(**kwargs):
        window = MainWindow(fast_config, **kwargs)
        windows.append(window)
        window.show()
        qtbot.waitExposed(window)
        return window

    yield make
    for window in windows:
        window.close()
        assert not window.controller.running
