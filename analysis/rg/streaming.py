"""Online coarse-graining: a pipeline stage fed one frame at a time (pure numerics, no threads).

Two kinds of state:

1. Pairing statistics of the *pairing window* (all frames so far, or the last
   ``window_frames``): the neuron second moments about the first frame, the sums and a nonzero
   bit per neuron and frame (statistics.py). The second-moment matrix is updated in blocks
   (design.md, "Blocked covariance"): ``block_frames`` rows are collected, then the block's
   product is added one slab of rows per frame while the next block fills, so every frame
   costs about the same (N^2 / 2 multiply-adds amortised, one BLAS call). With a trailing
   window the frames leaving the window are subtracted in the same product
   ([new; old]^T [new; -old]); the window's frames are kept (float32) for that.
2. After a re-pairing (``repair()``, on demand or every ``repair_every_frames``): the tree,
   and per frame the normalized coarse variables of every level (``coarse_values``), from which
   running sums are kept for the observables of the frames since that re-pairing: silence
   counts, nonzero-value moments and histogram, raw-sum moments, lagged products.

Agreement with the batch form (tested): ``repair()`` builds the same tree as
``build_tree(pairing_statistics(frames of the window))``, and ``observables()`` returns what
``measure(frames since the repair, tree, spectra_stats=<window statistics>)`` returns with the
same largest lag (up to rounding: sums are accumulated in a different order). Spectra use the
current pairing window; everything else the frames since the last re-pairing.

Values are used as float32 (the pipeline's rows are float32; a float64 row is rounded on entry,
so the frames subtracted from a trailing window are exactly those that were added). A frame
with a NaN or inf is rejected whole and counted (``frames_rejected``), never accumulated.
``update`` allocates nothing (one BLAS call into preallocated buffers); the bit sets of an
unbounded window double their capacity when full (rare; counted in ``capacity_growths``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from analysis.rg.fits import Exponents, FitRanges, fit_exponents
from analysis.rg.observables import (
    HIST_BINS,
    HIST_MAX,
    SPECTRUM_SIZES,
    Observables,
    autocovariance_from_sums,
    cluster_spectra,
    histogram_bin,
    moments_from_power_sums,
    tau_crossing,
)
from analysis.rg.statistics import PairingStatistics, mirror_upper_to_lower
from analysis.rg.tree import CoarseGrainingTree, build_tree, check_levels


@numba.njit(cache=True, nogil=True)
def _ingest(
    row: np.ndarray,
    shift: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    j: int,
    block_frames: int,
    ring: np.ndarray,
    ring_pos: int,
    remove_old: bool,
    shifted_sums: np.ndarray,
    raw_sums: np.ndarray,
    bits: np.ndarray,
    bit_index: int,
) -> bool:
    """Add one frame to the block buffers, sums and bit sets; False (nothing changed) if the
    frame has a non-finite value. With a window (ring.shape[0] > 0) the frame in ring slot
    ring_pos leaves (if remove_old) and the new frame takes its place."""
    n = row.shape[0]
    for i in range(n):
        if not math.isfinite(row[i]):
            return False
    windowed = ring.shape[0] > 0
    word = bit_index >> 6
    mask = np.uint64(1) << np.uint64(bit_index & 63)
    for i in range(n):
        v = np.float64(np.float32(row[i]))
        d = v - shift[i]
        left[j, i] = d
        right[j, i] = d
        shifted_sums[i] += d
        raw_sums[i] += v
        if windowed:
            if remove_old:
                old = np.float64(ring[ring_pos, i])
                od = old - shift[i]
                left[block_frames + j, i] = od
                right[block_frames + j, i] = -od
                shifted_sums[i] -= od
                raw_sums[i] -= old
            else:
                left[block_frames + j, i] = 0.0
                right[block_frames + j, i] = 0.0
            ring[ring_pos, i] = np.float32(v)
        if v != 0.0:
            bits[i, word] |= mask
        else:
            bits[i, word] &= ~mask
    return True


@numba.njit(cache=True, nogil=True)
def _coarse_frame(
    row: np.ndarray,
    start: np.ndarray,
    child_a: np.ndarray,
    child_b: np.ndarray,
    scale: np.ndarray,
    values: np.ndarray,
    raw: np.ndarray,
    active: np.ndarray,
    t: int,
    hist_max: float,
    silent: np.ndarray,
    power: np.ndarray,
    hist: np.ndarray,
    raw_moments: np.ndarray,
    totals: np.ndarray,
    first_values: np.ndarray,
    history: np.ndarray,
    lag_products: np.ndarray,
) -> None:
    """Coarse variables of all levels for one frame (frame t since the re-pairing) and the
    running sums of the observables (see observables.py for the definitions)."""
    n = start[1]
    total = start[start.shape[0] - 1]
    for g in range(n):
        v = np.float64(np.float32(row[g]))
        raw[g] = v
        values[g] = scale[g] * v
        active[g] = v != 0.0
    for g in range(n, total):
        a = child_a[g]
        b = child_b[g]
        values[g] = scale[g] * (values[a] + values[b])
        raw[g] = raw[a] + raw[b]
        active[g] = active[a] or active[b]
    max_lag = lag_products.shape[1] - 1
    ring_len = max_lag + 1
    p = ring_len - 1 - (t % ring_len)
    n_bins = hist.shape[1] - 1
    n_lags = min(max_lag, t)
    for k in range(start.shape[0] - 1):
        for g in range(start[k], start[k + 1]):
            v = values[g]
            r = raw[g]
            totals[g] += v
            raw_moments[g, 0] += r
            raw_moments[g, 1] += r * r
            if active[g]:
                v2 = v * v
                power[k, 0] += 1.0
                power[k, 1] += v
                power[k, 2] += v2
                power[k, 3] += v2 * v
                power[k, 4] += v2 * v2
                hist[k, histogram_bin(v, hist_max, n_bins)] += 1
            else:
                silent[k] += 1
            if t < max_lag:
                first_values[g, t] = v
            hist_row = history[g]
            hist_row[p] = v
            hist_row[p + ring_len] = v
            if v != 0.0:
                acc = lag_products[g]
                for tau in range(n_lags + 1):
                    acc[tau] += v * hist_row[p + tau]


@numba.njit(cache=True, nogil=True)
def _add_into(target: np.ndarray, r0: int, block: np.ndarray) -> None:
    """target[r0 + p, r0 + q] += block[p, q] (numpy's in-place add on this strided view
    copies through a temporary buffer; this does not)."""
    h, w = block.shape
    for p in range(h):
        row = target[r0 + p]
        src = block[p]
        for q in range(w):
            row[r0 + q] += src[q]


def _slab_edges(n: int, n_slabs: int) -> np.ndarray:
    """Row boundaries splitting the upper triangle of an n x n matrix into equal work."""
    k = np.arange(n_slabs + 1) / n_slabs
    edges = np.round(n * (1.0 - np.sqrt(1.0 - k))).astype(np.int64)
    edges[-1] = n
    return np.maximum.accumulate(edges)


class OnlineCoarseGraining:
    """Streaming coarse-graining of ``n_neurons`` activity values per frame.

    update(row)      one frame (shape (n_neurons,)); returns False if rejected (NaN/inf)
    repair()         re-pair on the current pairing window; observables restart
    begin_repair()   the same as a RepairJob whose run() may go on a worker thread while
                     update() continues; finish_repair(job) installs its tree between frames
    observables()    running observables since the last re-pairing (Observables)
    exponents()      beta, alpha, mu, z fitted to them (no error bars online)
    coarse_values(k) this frame's normalized level-k variables (a view)
    """

    def __init__(
        self,
        n_neurons: int,
        levels: int = 8,
        *,
        block_frames: int = 64,
        repair_every_frames: int | None = None,
        window_frames: int | None = None,
        max_lag_frames: int = 64,
        spectrum_sizes: tuple[int, ...] = SPECTRUM_SIZES,
        fit_ranges: FitRanges | None = None,
        hist_max: float = HIST_MAX,
        hist_bins: int = HIST_BINS,
        capacity_frames: int = 8192,
        repair_in_update: bool = True,
    ) -> None:
        n = _positive_int("n_neurons", n_neurons)
        self.n_neurons = n
        self.levels = check_levels(n, levels)
        self.block_frames = _positive_int("block_frames", block_frames)
        if repair_every_frames is not None:
            repair_every_frames = _positive_int("repair_every_frames", repair_every_frames)
        self.repair_every_frames = repair_every_frames
        self.repair_in_update = bool(repair_in_update)
        if window_frames is not None:
            window_frames = _positive_int("window_frames", window_frames)
            if window_frames < 2:
                raise ValueError(f"window_frames must be >= 2, got {window_frames}")
        self.window_frames = window_frames
        self.max_lag_frames = _positive_int("max_lag_frames", max_lag_frames)
        self.spectrum_sizes = tuple(spectrum_sizes)
        self.fit_ranges = FitRanges() if fit_ranges is None else fit_ranges
        self.hist_max = float(hist_max)
        self.hist_bins = _positive_int("hist_bins", hist_bins)

        b = self.block_frames
        self._block_rows = 2 * b if window_frames else b
        self._spare_blocks = [self._new_block(), self._new_block()]
        self._fill_left, self._fill_right = self._new_block()
        self._fill_count = 0
        self._waiting: list[_Block] = []  # complete blocks being added, oldest first
        self.block_buffer_growths = 0
        self._job: RepairJob | None = None
        self._last_spectra: dict = {}
        self._slabs = _slab_edges(n, b)
        heights = np.diff(self._slabs)
        widths = n - self._slabs[:-1]
        self._work = np.empty(int(max(1, np.max(heights * widths))))

        self.second_moment = np.zeros((n, n))
        self.shifted_sums = np.zeros(n)
        self.raw_sums = np.zeros(n)
        self.shift = np.zeros(n)
        capacity = window_frames if window_frames else _positive_int("capacity", capacity_frames)
        self._bits = np.zeros((n, (capacity + 63) // 64), dtype=np.uint64)
        self._ring = np.zeros((window_frames or 0, n), dtype=np.float32)
        self._workspace = (np.empty((n // 2) ** 2), np.empty(max(1, (n // 4) ** 2)))

        self.frames_seen = 0
        self.frames_rejected = 0
        self.capacity_growths = 0
        self.repair_count = 0
        self.tree: CoarseGrainingTree | None = None
        self.frames_since_repair = 0
        self._layout: tuple[np.ndarray, ...] | None = None

    # --------------------------------------------------------------------------------------
    @property
    def frames_in_window(self) -> int:
        if self.window_frames:
            return min(self.frames_seen, self.window_frames)
        return self.frames_seen

    @property
    def repair_due(self) -> bool:
        every = self.repair_every_frames
        if every is None:
            return False
        if self._job is not None:
            return False  # a re-pairing is already under way
        since = self.frames_seen if self.tree is None else self.frames_since_repair
        return since >= every

    @property
    def repair_running(self) -> bool:
        """True between begin_repair() and finish_repair()."""
        return self._job is not None

    def state_bytes(self) -> int:
        arrays = [self._work, self.second_moment, self._bits, self._ring, *self._workspace]
        blocks = [(self._fill_left, self._fill_right), *self._spare_blocks]
        blocks += [(b.left, b.right) for b in self._waiting]
        if self._job is not None:
            blocks += [(b.left, b.right) for b in self._job.blocks]
            arrays += [self._job.shifted_sums, self._job.raw_sums, self._job.nonzero_bits]
        for left, right in blocks:
            arrays += [left] if right is left else [left, right]
        if self._layout is not None:
            arrays += list(self._layout)
        return int(sum(a.nbytes for a in arrays))

    def _new_block(self) -> tuple[np.ndarray, np.ndarray]:
        left = np.zeros((self._block_rows, self.n_neurons))
        # without removals left == right: one buffer serves both
        right = np.zeros_like(left) if self.window_frames else left
        return left, right

    def _take_spare(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._spare_blocks:  # more blocks completed during a re-pairing than spares
            self.block_buffer_growths += 1
            return self._new_block()
        return self._spare_blocks.pop()

    # --------------------------------------------------------------------------------------
    def update(self, activity_row: np.ndarray) -> bool:
        """Add one frame. Returns False, and changes nothing, if it holds NaN or inf."""
        row = activity_row
        if row.shape != (self.n_neurons,):
            raise ValueError(
                f"activity_row must have shape ({self.n_neurons},), got {np.shape(row)}"
            )
        if self.frames_seen == 0:
            if not np.all(np.isfinite(row)):
                self.frames_rejected += 1
                return False
            self.shift[:] = row.astype(np.float32)
        window = self.window_frames
        if window:
            ring_pos = self.frames_seen % window
            bit_index = ring_pos
            remove_old = self.frames_seen >= window
        else:
            ring_pos = 0
            bit_index = self.frames_seen
            remove_old = False
            if bit_index >= self._bits.shape[1] * 64:
                self._grow_bits()
        ok = _ingest(
            row,
            self.shift,
            self._fill_left,
            self._fill_right,
            self._fill_count,
            self.block_frames,
            self._ring,
            ring_pos,
            remove_old,
            self.shifted_sums,
            self.raw_sums,
            self._bits,
            bit_index,
        )
        if not ok:
            self.frames_rejected += 1
            return False
        self.frames_seen += 1
        self._fill_count += 1
        if self._fill_count == self.block_frames:
            self._block_complete()
        if self._job is None:  # while a re-pairing runs the matrix is its: blocks wait
            self._advance_waiting()
        if self._layout is not None:
            self._observe(row)
        if self.repair_in_update and self.repair_due:
            self.repair()
        return True

    def _block_complete(self) -> None:
        if self._job is None:
            self._finish_waiting()
        self._waiting.append(_Block(self._fill_left, self._fill_right))
        self._fill_left, self._fill_right = self._take_spare()
        self._fill_count = 0

    def _advance_waiting(self) -> None:
        """One slab of every waiting block (older blocks are never behind newer ones, so each
        matrix element receives the blocks in the order the frames came)."""
        for block in self._waiting:
            if block.next_slab < self.block_frames:
                self._apply_slab(block.left, block.right, block.next_slab)
                block.next_slab += 1
        while self._waiting and self._waiting[0].next_slab >= self.block_frames:
            done = self._waiting.pop(0)
            self._spare_blocks.append((done.left, done.right))

    def _finish_blocks(self, blocks: list[_Block]) -> None:
        for block in blocks:
            while block.next_slab < self.block_frames:
                self._apply_slab(block.left, block.right, block.next_slab)
                block.next_slab += 1

    def _finish_waiting(self) -> None:
        self._finish_blocks(self._waiting)
        self._spare_blocks += [(b.left, b.right) for b in self._waiting]
        self._waiting.clear()

    def _apply_partial_block(self, left: np.ndarray, right: np.ndarray, frames: int) -> None:
        """Add a block holding only ``frames`` frames: unused rows must not contribute."""
        b = self.block_frames
        left[frames:b] = 0.0
        if self.window_frames:
            left[b + frames :] = 0.0
            right[frames:b] = 0.0
            right[b + frames :] = 0.0
        for slab in range(b):
            self._apply_slab(left, right, slab)

    def _apply_slab(self, left: np.ndarray, right: np.ndarray, slab: int) -> None:
        r0 = int(self._slabs[slab])
        r1 = int(self._slabs[slab + 1])
        if r1 <= r0:
            return
        n = self.n_neurons
        out = self._work[: (r1 - r0) * (n - r0)].reshape(r1 - r0, n - r0)
        np.matmul(left[:, r0:r1].T, right[:, r0:], out=out)
        _add_into(self.second_moment, r0, out)

    def flush(self) -> None:
        """Bring the second-moment matrix up to date with every frame received."""
        self._check_no_job("flush the second-moment matrix")
        self._finish_waiting()
        if self._fill_count:
            self._apply_partial_block(self._fill_left, self._fill_right, self._fill_count)
            self._fill_count = 0

    def _check_no_job(self, what: str) -> None:
        if self._job is not None:
            raise RuntimeError(
                f"cannot {what} while a re-pairing is running (the matrix is the job's until "
                "finish_repair(job))"
            )

    def _grow_bits(self) -> None:
        grown = np.zeros((self.n_neurons, 2 * self._bits.shape[1]), dtype=np.uint64)
        grown[:, : self._bits.shape[1]] = self._bits
        self._bits = grown
        self.capacity_growths += 1

    # --------------------------------------------------------------------------------------
    def pairing_statistics(self) -> PairingStatistics:
        """The current pairing window's statistics (upper triangle valid; after ``repair``
        also the full rows)."""
        self.flush()
        return PairingStatistics(
            n_frames=self.frames_in_window,
            second_moment=self.second_moment,
            shifted_sums=self.shifted_sums,
            raw_sums=self.raw_sums,
            nonzero_bits=self._window_bits(),
            rows_valid=False,
        )

    def _window_bits(self) -> np.ndarray:
        words = self._bits.shape[1]
        if not self.window_frames:
            words = min(words, (self.frames_seen + 63) // 64)
        return self._bits[:, :words]

    def repair(self) -> CoarseGrainingTree:
        """Re-pair on the pairing window now; the observables restart from the next frame.
        The same as ``finish_repair`` of a ``begin_repair`` job run on this thread."""
        job = self.begin_repair()
        job.run()
        return self.finish_repair(job)

    def begin_repair(self) -> RepairJob:
        """Start a re-pairing on the pairing window as it is now, to run elsewhere.

        Cheap (copies of the sums and bit sets, O(N x window / 64)): the block products not yet
        in the second-moment matrix are handed to the job, which adds them, pairs all levels and
        keeps the tree. ``job.run()`` may run on another thread (numba kernels and BLAS release
        the GIL) while this stage keeps taking frames: they go into new blocks that wait, and
        the observables keep using the old tree. ``finish_repair(job)`` installs the tree
        between two frames (observables restart) and the waiting blocks are then added one
        slab per frame. The result is the tree ``repair()`` would have built at this frame.
        Until then flush(), pairing_statistics() and a second begin_repair() raise, and
        observables() repeats the last spectra."""
        if self._job is not None:
            raise RuntimeError("a re-pairing is already running: finish_repair(job) first")
        if self.frames_in_window < 2:
            raise ValueError(
                f"re-pairing needs at least 2 frames in the pairing window, got "
                f"{self.frames_in_window}"
            )
        blocks = self._waiting
        self._waiting = []
        if self._fill_count:
            partial = _Block(self._fill_left, self._fill_right, frames=self._fill_count)
            blocks.append(partial)
            self._fill_left, self._fill_right = self._take_spare()
            self._fill_count = 0
        job = RepairJob(
            self,
            blocks,
            n_frames=self.frames_in_window,
            shifted_sums=self.shifted_sums.copy(),
            raw_sums=self.raw_sums.copy(),
            nonzero_bits=self._window_bits().copy(),
        )
        self._job = job
        return job

    def finish_repair(self, job: RepairJob) -> CoarseGrainingTree:
        """Install the tree of a finished job (call between frames, on the stage's thread);
        re-raises the job's error, if it failed, after releasing the stage."""
        if job is not self._job:
            raise ValueError("finish_repair: this job is not the running re-pairing of this stage")
        if job.error is None and job.tree is None:
            raise RuntimeError("finish_repair: the job has not run yet (call job.run())")
        self._job = None
        self._spare_blocks += [(b.left, b.right) for b in job.blocks]
        if job.error is not None:
            raise job.error
        assert job.tree is not None
        self._install(job.tree)
        self.repair_count += 1
        return job.tree

    def _install(self, tree: CoarseGrainingTree) -> None:
        start, child_a, child_b, scale = tree.flat_layout()
        total = int(start[-1])
        lag = self.max_lag_frames
        if self._layout is None or self._layout[0].shape[0] != total:
            self._values = np.zeros(total)
            self._raw = np.zeros(total)
            self._active = np.zeros(total, dtype=np.bool_)
            self._raw_moments = np.zeros((total, 2))
            self._totals = np.zeros(total)
            self._first_values = np.zeros((total, lag))
            self._history = np.zeros((total, 2 * (lag + 1)))
            self._lag_products = np.zeros((total, lag + 1))
            self._silent = np.zeros(self.levels + 1, dtype=np.int64)
            self._power = np.zeros((self.levels + 1, 5))
            self._hist = np.zeros((self.levels + 1, self.hist_bins + 1), dtype=np.int64)
        for a in (
            self._values,
            self._raw,
            self._active,
            self._raw_moments,
            self._totals,
            self._first_values,
            self._history,
            self._lag_products,
            self._silent,
            self._power,
            self._hist,
        ):
            a[...] = 0
        self._start, self._child_a, self._child_b, self._scale = start, child_a, child_b, scale
        self._layout = (
            self._values,
            self._raw_moments,
            self._totals,
            self._first_values,
            self._history,
            self._lag_products,
        )
        self.tree = tree
        self.frames_since_repair = 0

    def _observe(self, row: np.ndarray) -> None:
        _coarse_frame(
            row,
            self._start,
            self._child_a,
            self._child_b,
            self._scale,
            self._values,
            self._raw,
            self._active,
            self.frames_since_repair,
            self.hist_max,
            self._silent,
            self._power,
            self._hist,
            self._raw_moments,
            self._totals,
            self._first_values,
            self._history,
            self._lag_products,
        )
        self.frames_since_repair += 1

    def coarse_values(self, level: int) -> np.ndarray:
        """The current frame's normalized variables of ``level`` (a view; zeros before the
        first re-pairing)."""
        if self._layout is None:
            raise RuntimeError("no coarse-graining tree yet: call repair() first")
        if not 0 <= level <= self.levels:
            raise ValueError(f"level must be in 0..{self.levels}, got {level}")
        return self._values[self._start[level] : self._start[level + 1]]

    # --------------------------------------------------------------------------------------
    def observables(self) -> Observables:
        """Observables of the frames since the last re-pairing (spectra: pairing window)."""
        tree = self.tree
        if tree is None or self._layout is None:
            raise RuntimeError("no coarse-graining tree yet: call repair() first")
        t = self.frames_since_repair
        levels = self.levels
        start = self._start
        lag = min(self.max_lag_frames, max(t - 1, 0))
        ring_len = self.max_lag_frames + 1
        p_last = ring_len - 1 - ((t - 1) % ring_len) if t else 0
        n_clusters = np.diff(start)
        samples = n_clusters * t
        with np.errstate(invalid="ignore", divide="ignore"):
            p0 = self._silent / samples
            raw_mean = self._raw_moments[:, 0] / t
            raw_var = self._raw_moments[:, 1] / t - raw_mean**2
        m2 = np.array([raw_var[start[k] : start[k + 1]].mean() for k in range(levels + 1)])
        c_k = np.full((levels + 1, lag + 1), np.nan)
        if t >= 1:
            zero = np.zeros((start[-1], 1))
            first = np.concatenate([zero, np.cumsum(self._first_values[:, :lag], axis=1)], axis=1)
            recent = self._history[:, p_last : p_last + lag]
            last = np.concatenate([zero, np.cumsum(recent, axis=1)], axis=1)
            products = self._lag_products[:, : lag + 1]
            for k in range(levels + 1):
                sl = slice(start[k], start[k + 1])
                c = autocovariance_from_sums(products[sl], self._totals[sl], first[sl], last[sl], t)
                with np.errstate(invalid="ignore", divide="ignore"):
                    c_k[k] = c / c[0]
        taus = [tau_crossing(c_k[k]) for k in range(levels + 1)]
        moments = np.array([moments_from_power_sums(self._power[k]) for k in range(levels + 1)])
        width = self.hist_max / self.hist_bins
        with np.errstate(invalid="ignore", divide="ignore"):
            density = self._hist[:, : self.hist_bins] / (self._power[:, :1] * width)
            overflow = self._hist[:, self.hist_bins] / self._power[:, 0]
        notes = []
        if self._job is None:
            spectra = cluster_spectra(self.pairing_statistics(), tree, self.spectrum_sizes)
            self._last_spectra = spectra
        else:
            spectra = self._last_spectra
            notes.append("re-pairing running: spectra as of the last call before it")
        if tree.unnormalizable.any():
            notes.append(
                f"{int(tree.unnormalizable.sum())} neuron(s) with nonzero values averaging <= 0 "
                "in the pairing window were given weight 0"
            )
        if self.frames_rejected:
            notes.append(f"{self.frames_rejected} frame(s) with NaN/inf rejected")
        return Observables(
            cluster_sizes=tree.cluster_sizes,
            n_clusters=n_clusters,
            n_frames=t,
            p0=p0,
            n_silent=self._silent.copy(),
            m2=m2,
            q_n_nonzero=self._power[:, 0].astype(np.int64),
            q_mean=moments[:, 0],
            q_variance=moments[:, 1],
            q_skewness=moments[:, 2],
            q_excess_kurtosis=moments[:, 3],
            q_edges=np.linspace(0.0, self.hist_max, self.hist_bins + 1),
            q_density=density,
            q_overflow=overflow,
            lags_frames=np.arange(lag + 1),
            c_k=c_k,
            tau_c_frames=np.array([v for v, _ in taus]),
            tau_c_reason=[r for _, r in taus],
            spectra=spectra,
            notes=notes,
        )

    def exponents(self) -> Exponents:
        return fit_exponents(self.observables(), self.fit_ranges)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class _Block:
    """A block of frames for the second-moment product: left^T right is added one slab of rows
    at a time (next_slab); ``frames`` < block_frames marks a partial block (flushed whole)."""

    __slots__ = ("left", "right", "next_slab", "frames")

    def __init__(self, left: np.ndarray, right: np.ndarray, frames: int = -1) -> None:
        self.left = left
        self.right = right
        self.next_slab = 0
        self.frames = frames


class RepairJob:
    """A re-pairing handed out by ``OnlineCoarseGraining.begin_repair()``.

    ``run()`` adds the blocks the matrix was missing at that frame, mirrors it and builds the
    tree from the copied sums and bit sets; it touches no state the stage's ``update`` uses,
    so it may run on another thread. ``tree`` (or ``error``) is set when it is done."""

    def __init__(
        self,
        stage: OnlineCoarseGraining,
        blocks: list[_Block],
        *,
        n_frames: int,
        shifted_sums: np.ndarray,
        raw_sums: np.ndarray,
        nonzero_bits: np.ndarray,
    ) -> None:
        self.stage = stage
        self.blocks = blocks
        self.n_frames = n_frames
        self.shifted_sums = shifted_sums
        self.raw_sums = raw_sums
        self.nonzero_bits = nonzero_bits
        self.tree: CoarseGrainingTree | None = None
        self.error: BaseException | None = None

    def run(self) -> CoarseGrainingTree:
        stage = self.stage
        try:
            for block in self.blocks:  # in frame order, as flush() adds them
                if block.frames >= 0:
                    stage._apply_partial_block(block.left, block.right, block.frames)
                    block.next_slab = stage.block_frames
                else:
                    stage._finish_blocks([block])
            mirror_upper_to_lower(stage.second_moment, stage.n_neurons)
            stats = PairingStatistics(
                self.n_frames,
                stage.second_moment,
                self.shifted_sums,
                self.raw_sums,
                self.nonzero_bits,
                rows_valid=True,
            )
            self.tree = build_tree(stats, stage.levels, bad_mean="zero", workspace=stage._workspace)
        except Exception as e:  # handed to finish_repair on the stage's thread
            self.error = e
            raise
        return self.tree
