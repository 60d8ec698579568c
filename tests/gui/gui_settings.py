"""Settings shared by the GUI tests: a small, fast simulated rig and a quick protocol."""

#: ~16.6 frames/s of 256 x 64 px; ROIs after 2 s of reference frames
FAST_RIG = {
    "scanner.lines": 64,
    "scanner.fov_um": [300.0, 75.0],
    "rois.reference_s": 2.0,
}
#: open_loop_train on the cells around the centre of that field, a train every second
FAST_PROTOCOL = {
    "target_centre_um": "[0, 0]",
    "target_radius_um": "100",
    "interval_s": "1.0",
    "start_after_s": "0.5",
}
