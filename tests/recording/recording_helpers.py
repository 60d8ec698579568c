"""Settings shared by the recording tests (imported as a plain module: tests has no packages)."""

#: a small simulated rig (64 lines, ~16.6 Hz) whose runs take a few seconds
FAST_RIG = ["scanner.lines=64", "scanner.fov_um=[300, 75]", "rois.reference_s=2"]

#: open_loop_train parameters for that field: a train every 2 s once ROIs exist
TRAIN = [
    "protocol.target_centre_um=[0, 0]",
    "protocol.target_radius_um=100",
    "protocol.interval_s=2",
    "protocol.start_after_s=1",
]
