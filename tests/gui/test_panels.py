"""Panels fed with hand-made snapshots: field coordinates, click-to-select, planes,
deconvolved traces, and the coarse-graining panel with full, partial and broken data."""

import numpy as np
import pytest
from pyqtgraph.Qt import QtCore

from rig.gui import geometry
from rig.gui.rg_panel import WAITING, CoarseGrainingPanel, p0_fit
from rig.gui.selection import auto_selection
from rig.live import LiveSnapshot

H, W = 40, 60
PIXEL_UM = (1.0, 2.0)  # (y, x), as scanners report it


def two_roi_snapshot(**extras):
    labels = np.zeros((H, W), np.int32)
    labels[10:14, 20:24] = 1  # ROI 0, centre pixel (11.5, 21.5)
    labels[30:34, 50:54] = 2  # ROI 1, centre pixel (31.5, 51.5)
    t = np.arange(50) / 10.0
    dff = np.column_stack([np.sin(t), np.cos(t)]).astype(np.float32)
    return LiveSnapshot(
        frame_index=49,
        time_s=4.9,
        frame_shape=(H, W),
        pixel_size_um=PIXEL_UM,
        frame_rate_hz=10.0,
        n_rois=2,
        roi_label_image=labels,
        roi_centroids_px=np.array([[11.5, 21.5], [31.5, 51.5]]),
        dff_history=dff,
        history_times_s=t,
        noise_level=np.array([2.0, 3.0]),
        status="running",
        extras=dict(extras),
    )


def test_field_coordinates_are_centred_and_match_the_stimulation_targets():
    # x = (col + 0.5 - W/2) px_x, y = (row + 0.5 - H/2) px_y: the field centre is (0, 0)
    c = geometry.centroids_um(
        np.array([[11.5, 21.5], [H / 2 - 0.5, W / 2 - 0.5]]), (H, W), PIXEL_UM
    )
    assert c[0] == pytest.approx([(21.5 + 0.5 - 30) * 2.0, (11.5 + 0.5 - 20) * 1.0])
    assert c[1] == pytest.approx([0.0, 0.0])
    x0, y0, width, height = geometry.field_rect_um((H, W), PIXEL_UM)
    assert (x0, y0, width, height) == (-60.0, -20.0, 120.0, 40.0)
    assert geometry.pixel_at_um(float(c[0, 0]), float(c[0, 1]), (H, W), PIXEL_UM) == (12, 22)
    assert geometry.pixel_at_um(61.0, 0.0, (H, W), PIXEL_UM) is None


def click_at_um(qtbot, panel, x_um, y_um):
    view = panel.plot.getPlotItem().vb
    scene_point = view.mapViewToScene(QtCore.QPointF(x_um, y_um))
    widget_point = panel.plot.mapFromScene(scene_point)
    qtbot.mouseClick(panel.plot.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=widget_point)


def test_clicking_an_roi_on_the_image_selects_it_and_feeds_the_manual_trigger(make_window, qtbot):
    window = make_window(protocol="open_loop_train")
    snap = two_roi_snapshot()
    frame = np.random.default_rng(0).integers(0, 500, (H, W)).astype(np.int16)
    window.image.refresh(snap, frame)
    window.selection.chosen_by_user = True
    qtbot.wait(50)
    centres = geometry.centroids_um(snap.roi_centroids_px, (H, W), PIXEL_UM)

    click_at_um(qtbot, window.image, *centres[1])
    assert window.selection.rois == [1]
    click_at_um(qtbot, window.image, *centres[0])
    assert window.selection.rois == [1, 0]
    click_at_um(qtbot, window.image, *centres[1])
    assert window.selection.rois == [0]
    click_at_um(qtbot, window.image, 55.0, -18.0)  # far from any ROI: nothing changes
    assert window.selection.rois == [0]

    # the manual trigger aims at the selected ROI's centre in field coordinates
    window.manual.refresh(snap)
    stimulus = window.manual.stimulus()
    assert stimulus.targets_um == (tuple(centres[0]),)
    # the image keeps the levels it was given (no auto-levels per frame)
    window.image.set_levels(10.0, 20.0)
    window.image.refresh(snap, frame * 3)
    assert window.image.levels == pytest.approx((10.0, 20.0))


def test_the_plane_selector_appears_only_when_several_planes_are_imaged(make_window):
    window = make_window(protocol="open_loop_train")
    panel = window.image
    frame = np.zeros((H, W), np.int16)
    panel.refresh(two_roi_snapshot(), frame)
    assert panel.plane_box.isHidden()
    panel.refresh(two_roi_snapshot(planes=[0.0]), frame)
    assert panel.plane_box.isHidden()
    panel.refresh(two_roi_snapshot(planes=[-20.0, 0.0, 20.0], plane=2), frame)
    assert not panel.plane_box.isHidden() and panel.plane_box.count() == 3
    assert "z = 20 um" in panel.plane_box.itemText(2)


def test_deconvolved_traces_are_drawn_when_a_stage_publishes_them(make_window):
    window = make_window(protocol="open_loop_train")
    window.selection.set([0, 1])
    traces = window.traces
    snap = two_roi_snapshot()
    traces.refresh(snap)
    assert traces.show_deconvolved.isHidden()
    assert [c.isVisible() for c in traces._deconvolved] == [False, False]
    deconvolved = np.clip(snap.dff_history, 0, None)
    traces.refresh(two_roi_snapshot(deconvolved=deconvolved))
    assert not traces.show_deconvolved.isHidden()
    x, y = traces._deconvolved[1].getData()
    # second selected ROI is drawn lowest, at offset 0: its deconvolved values as given
    assert np.allclose(y, deconvolved[:, 1])


def test_p0_fit_recovers_the_power_law_of_the_silence_probability():
    # P0(K) = exp(-a K^beta) (Meshulam et al. 2019): -ln P0 is a line of slope beta in log-log
    k = 2.0 ** np.arange(8)
    p0 = np.exp(-0.05 * k**0.87)
    a, beta = p0_fit(k, p0, None)
    assert a == pytest.approx(0.05) and beta == pytest.approx(0.87)
    a_given, _ = p0_fit(k, p0, 0.87)
    assert a_given == pytest.approx(0.05)
    assert p0_fit(k, np.ones_like(k), None) is None  # never silent: nothing to fit


def full_rg():
    ks = [16, 32, 64]
    x = np.linspace(0, 4, 20)
    return {
        "K": [1, 2, 4, 8, 16, 32, 64],
        "p0": list(np.exp(-0.05 * np.array([1, 2, 4, 8, 16, 32, 64]) ** 0.87)),
        "beta": 0.87,
        "q_k": {k: (x, np.exp(-x)) for k in ks},
        "spectra": {k: (np.arange(1, k + 1) / k, (k / np.arange(1, k + 1)) ** 0.7) for k in ks},
        "c_k": {k: (x, np.exp(-x)) for k in ks},
    }


def curves_in(plot):
    return [item for item in plot.listDataItems() if item.getData()[0] is not None]


def test_coarse_graining_panel_waits_draws_and_survives_partial_data(qtbot):
    panel = CoarseGrainingPanel()
    qtbot.addWidget(panel)
    panel.refresh(two_roi_snapshot())
    assert panel.pages.currentWidget() is panel.waiting and panel.waiting.text() == WAITING

    panel.refresh(two_roi_snapshot(rg=full_rg()))
    assert panel.pages.currentWidget() is panel.graphics
    assert len(curves_in(panel.q_plot)) == 3
    assert len(curves_in(panel.spectra_plot)) == 3
    assert len(curves_in(panel.c_plot)) == 3
    assert "beta = 0.87" in panel.p0_plot.titleLabel.text

    partial = {"K": [1, 2, 4], "p0": [0.9, 0.8, 0.6], "q_k": "not a table", "c_k": {16: ([1], [])}}
    panel.refresh(two_roi_snapshot(rg=partial))
    assert len(curves_in(panel.p0_plot)) == 2  # points and fit (beta fitted)
    assert curves_in(panel.q_plot) == [] and "no data" in panel.q_plot.titleLabel.text
    assert curves_in(panel.c_plot) == [] and curves_in(panel.spectra_plot) == []

    panel.refresh(two_roi_snapshot(rg={"K": [1, 2], "p0": [0.5]}))
    assert "no data" in panel.p0_plot.titleLabel.text
    panel.refresh(two_roi_snapshot(rg=[1, 2, 3]))
    assert panel.pages.currentWidget() is panel.waiting


def test_the_first_selection_shows_stimulated_then_active_cells_not_broken_ones():
    rng = np.random.default_rng(3)
    dff = rng.normal(0.0, 0.05, (200, 5))  # shot noise, sigma 0.05
    dff[100:110, 2] += 1.0  # ROI 2: one transient 20 sigma high
    dff[:, 4] = rng.normal(0.0, 1e6, 200)  # ROI 4: broken (near-zero baseline)
    noise = np.array([5.0, 5.0, 5.0, 5.0, 1e8])
    chosen = auto_selection(dff, target_rois=[3], n=2, noise_level=noise)
    assert chosen == [3, 2]  # the stimulated cell first, then the one with a transient
    assert 4 not in auto_selection(dff, target_rois=[], n=4, noise_level=noise)
    assert auto_selection(dff[:2], target_rois=[1], n=4) == [1]  # too little history
