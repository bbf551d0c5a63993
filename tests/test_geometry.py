"""Geometry: peak rounding, crop/paste, and sub-pixel placement against GalSim as the oracle."""

import doctest
import subprocess
import sys
import unittest

import galsim
import lsst.utils.tests
import numpy as np
from lsst.meas.madness.engine import geometry
from lsst.meas.madness.engine.geometry import (
    crop_stamps,
    paste_stamps,
    peaks_to_pixels,
    placement_matrices,
    placement_windows,
    round_half_up,
    shift_matrices,
    shift_stamps,
    stamp_origins_xy,
    stamp_overlap,
    subpixel_shifts,
    zoom_bin_stamps,
    zoom_footprint_size,
    zoom_place_stamps,
    zoom_placement_matrices,
)

SCALE = 0.2  # arcsec per pixel, LSST
SIZE = 45


def _galaxy(flux=1e4):
    """A sheared Exponential (hlr 0.5") convolved with a Moffat PSF (FWHM 0.7")."""
    gal = galsim.Exponential(half_light_radius=0.5, flux=flux).shear(e1=0.25, e2=-0.1)
    return galsim.Convolve(gal, galsim.Moffat(beta=3.5, fwhm=0.7))


def _draw(obj, nx, ny, x, y):
    """GalSim's drawing of ``obj`` centred at 0-indexed pixel position ``(x, y)`` of an nx x ny image.

    With ``offset`` GalSim puts the profile centre at the image's true centre plus the offset;
    the true centre of an nx-pixel axis is ``(nx - 1) / 2`` in 0-indexed pixel coordinates.
    """
    offset = (x - (nx - 1) / 2.0, y - (ny - 1) / 2.0)
    return obj.drawImage(nx=nx, ny=ny, scale=SCALE, offset=offset).array.astype(np.float64)


class RoundingTestCase(lsst.utils.tests.TestCase):
    def test_round_half_up(self):
        values = np.array([-1.5, -0.5, -0.49, 0.0, 0.49, 0.5, 1.5, 2.5])
        self.assertEqual(round_half_up(values).tolist(), [-1, 0, 0, 0, 0, 1, 2, 3])
        # Python's round is banker's rounding; ours must not be.
        self.assertNotEqual(round(2.5), int(round_half_up(2.5)))

    def test_peaks_and_shifts(self):
        rng = np.random.default_rng(1)
        peaks = rng.uniform(-10, 50, (200, 2))
        pix = peaks_to_pixels(peaks)
        shifts = subpixel_shifts(peaks)
        np.testing.assert_allclose(pix + shifts, peaks[:, ::-1], atol=1e-12)
        self.assertTrue(((shifts >= -0.5) & (shifts < 0.5)).all())
        self.assertEqual(stamp_origins_xy(np.array([[10.5, 3.49]]), 45).tolist(), [[3 - 22, 11 - 22]])


class CropPasteTestCase(lsst.utils.tests.TestCase):
    def test_paste_matches_loop_and_clips(self):
        rng = np.random.default_rng(2)
        stamps = rng.normal(size=(5, 3, 7, 7))
        yx0 = np.array([[-3, -2], [10, 15], [16, -6], [0, 0], [30, 30]])  # edges, and one off the grid
        shape = (20, 18)
        expected = np.zeros((5, 3, *shape))
        for i, (oy, ox) in enumerate(yx0):
            for r in range(7):
                for c in range(7):
                    if 0 <= oy + r < shape[0] and 0 <= ox + c < shape[1]:
                        expected[i, :, oy + r, ox + c] = stamps[i, :, r, c]
        np.testing.assert_array_equal(paste_stamps(stamps, yx0, shape, total=False), expected)
        np.testing.assert_allclose(paste_stamps(stamps, yx0, shape), expected.sum(axis=0), atol=1e-12)
        # An origin in another frame, and adding into an existing grid.
        base = np.ones((3, *shape))
        out = paste_stamps(stamps, yx0 + [100, 200], shape, image_yx0=(100, 200), out=base)
        self.assertIs(out, base)
        np.testing.assert_allclose(out, 1.0 + expected.sum(axis=0), atol=1e-12)

    def test_crop_round_trip_and_zero_fill(self):
        rng = np.random.default_rng(3)
        image = rng.normal(size=(2, 30, 40)).astype(np.float32)
        yx0 = np.array([[5, 5], [-4, 30], [25, -3]])
        cut = crop_stamps(image, yx0, 9)
        self.assertEqual(cut.shape, (3, 2, 9, 9))
        self.assertEqual(cut.dtype, np.float32)
        np.testing.assert_array_equal(cut[0], image[:, 5:14, 5:14])
        np.testing.assert_array_equal(cut[1, :, :4], 0.0)  # rows above the image
        np.testing.assert_array_equal(cut[1, :, 4:, :], image[:, 0:5, 30:39])
        np.testing.assert_array_equal(cut[2, :, 5:], 0.0)  # rows below the image
        np.testing.assert_array_equal(cut[2, :, :5, :3], 0.0)  # columns left of it
        # Paste back what was cut: the image is restored where each stamp covers it, zero elsewhere.
        for i in range(3):
            back = paste_stamps(cut[i:i + 1], yx0[i:i + 1], image.shape[1:])
            covered = paste_stamps(np.ones((1, 1, 9, 9)), yx0[i:i + 1], image.shape[1:])[0] > 0
            np.testing.assert_array_equal(back[:, covered], image[:, covered])
            np.testing.assert_array_equal(back[:, ~covered], 0.0)
        # One image per stamp, in a shifted frame.
        per = rng.normal(size=(3, 2, 30, 40))
        cut2 = crop_stamps(per, yx0 + 7, 9, image_yx0=(7, 7))
        np.testing.assert_array_equal(cut2[0], per[0, :, 5:14, 5:14])
        self.assertEqual(stamp_overlap((-4, 30), (9, 9), (0, 0, 30, 40)),
                         ((slice(4, 9), slice(0, 9)), (slice(0, 5), slice(30, 39))))
        self.assertIsNone(stamp_overlap((40, 0), (9, 9), (0, 0, 30, 40)))


class PlacementTestCase(lsst.utils.tests.TestCase):
    def test_integer_offsets_are_one_hot(self):
        offsets = np.array([-3, 0, 4, 12, 20])
        length, s = 17, 7
        one_hot = np.zeros((len(offsets), length, s), np.float32)
        for i, o in enumerate(offsets):
            for r in range(length):
                if 0 <= r - o < s:
                    one_hot[i, r, r - o] = 1.0
        np.testing.assert_array_equal(placement_matrices(offsets, length, s), one_hot)
        np.testing.assert_array_equal(placement_matrices(offsets.astype(float), length, s, kernel="lanczos3"),
                                      one_hot)
        np.testing.assert_array_equal(shift_matrices(np.zeros(2), 9), np.broadcast_to(np.eye(9), (2, 9, 9)))
        stamps = np.random.default_rng(4).normal(size=(2, 3, 9, 9)).astype(np.float32)
        self.assertIs(shift_stamps(stamps, np.zeros((2, 2))).dtype, stamps.dtype)
        np.testing.assert_array_equal(shift_stamps(stamps, np.zeros((2, 2))), stamps)

    def test_shift_matches_galsim(self):
        """A centred GalSim drawing, shifted by us, equals GalSim drawing at the sub-pixel position."""
        gal = _galaxy()
        centred = _draw(gal, SIZE, SIZE, SIZE // 2, SIZE // 2)
        rng = np.random.default_rng(5)
        for kernel, tol in (("fourier", 1e-3), ("lanczos3", 1e-2)):
            for dx, dy in [(0.3, -0.2), (-0.5, 0.45), (0.49, 0.0), *rng.uniform(-0.5, 0.5, (3, 2))]:
                oracle = _draw(gal, SIZE, SIZE, SIZE // 2 + dx, SIZE // 2 + dy)
                ours = shift_stamps(centred[None, None], np.array([[dy, dx]]), kernel=kernel)[0, 0]
                with self.subTest(kernel=kernel, dx=dx, dy=dy):
                    self.assertLess(abs(ours.sum() / oracle.sum() - 1.0), 5e-3)
                    self.assertLess(np.linalg.norm(ours - oracle) / np.linalg.norm(oracle), tol)
                    # Far better than leaving the galaxy on the pixel centre.
                    self.assertLess(np.linalg.norm(ours - oracle), 0.1 * np.linalg.norm(centred - oracle))

    def test_placement_matches_galsim(self):
        """Placement matrices put a centred stamp at a float position of a region, cropped at its edge."""
        gal = _galaxy()
        centred = _draw(gal, SIZE, SIZE, SIZE // 2, SIZE // 2)
        h, w = 60, 50
        for x, y in [(30.3, 20.6), (4.45, 40.0), (47.7, 57.2)]:  # the last two cross the region edge
            pix_x, pix_y = round_half_up(x), round_half_up(y)
            off_x = pix_x - SIZE // 2 + (x - pix_x)
            off_y = pix_y - SIZE // 2 + (y - pix_y)
            rows = placement_matrices(np.array([off_y]), h, SIZE)[0].astype(np.float64)
            cols = placement_matrices(np.array([off_x]), w, SIZE)[0].astype(np.float64)
            placed = rows @ centred @ cols.T
            oracle = _draw(gal, w, h, x, y)
            # The oracle has flux beyond the 45-pixel stamp; compare inside the stamp window.
            origin = [[pix_y - SIZE // 2, pix_x - SIZE // 2]]
            window = paste_stamps(np.ones((1, 1, SIZE, SIZE)), origin, (h, w))[0]
            oracle = oracle * (window > 0)
            with self.subTest(x=x, y=y):
                self.assertLess(abs(placed.sum() / oracle.sum() - 1.0), 5e-3)
                self.assertLess(np.abs(placed - oracle).max(), 2e-3 * oracle.max())
                # Centroid within a hundredth of a pixel of the true one (interior case only).
                if x == 30.3:
                    yy, xx = np.mgrid[:h, :w]
                    self.assertAlmostEqual((placed * xx).sum() / placed.sum(), x, delta=0.01)
                    self.assertAlmostEqual((placed * yy).sum() / placed.sum(), y, delta=0.01)


def _big_galaxy(flux=1e5):
    """A sheared Exponential of half-light radius 2.5" (a bright disc bigger than the 45-px stamp), Moffat PSF."""
    gal = galsim.Exponential(half_light_radius=2.5, flux=flux).shear(e1=0.3, e2=0.1)
    return galsim.Convolve(gal, galsim.Moffat(beta=3.5, fwhm=0.7))


class ZoomTestCase(lsst.utils.tests.TestCase):
    """Stamps drawn with zoom-times larger pixels, placed on the image grid: GalSim and numpy as oracles."""

    def test_flux_kept_and_box_is_repeat(self):
        rng = np.random.default_rng(11)
        stamp = rng.uniform(0, 1, (7, 7))
        for kernel in ("box", "linear"):
            for zoom in (1, 2, 3, 4):
                m = zoom_placement_matrices(np.array([40.0, 37.3]), 80, 7, zoom, kernel=kernel).astype(np.float64)
                with self.subTest(kernel=kernel, zoom=zoom):
                    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)  # every stamp pixel's flux lands
                    placed = m[1] @ stamp @ m[1].T
                    self.assertAlmostEqual(placed.sum(), stamp.sum(), delta=1e-5 * stamp.sum())
                    # The centroid is the float centre (the kernels are symmetric).
                    yy = np.arange(80)
                    self.assertAlmostEqual((placed.sum(axis=1) * yy).sum() / placed.sum(),
                                           37.3 + (stamp.sum(axis=1) * (np.arange(7) - 3)).sum() / stamp.sum() * zoom,
                                           delta=1e-4)
        # Odd zoom, integer centre, box kernel: each stamp pixel is a flat 3x3 block, as np.repeat makes it.
        m = zoom_placement_matrices(np.array([10.0]), 21, 7, 3, kernel="box")[0].astype(np.float64)
        expected = np.repeat(np.repeat(stamp, 3, axis=0), 3, axis=1) / 9.0
        np.testing.assert_allclose(m @ stamp @ m.T, expected, atol=1e-7)
        # Zoom 1, integer centre, box kernel: the one-hot placement of placement_matrices.
        np.testing.assert_array_equal(zoom_placement_matrices(np.array([10.0]), 21, 7, 1, kernel="box"),
                                      placement_matrices(np.array([7]), 21, 7))

    def test_zoomed_placement_matches_galsim(self):
        """GalSim's drawing at 0.4"/px, placed with zoom 2, is GalSim's drawing at 0.2"/px; the 45-px
        stamp at 0.2"/px loses the galaxy's wings."""
        gal = _big_galaxy()
        size = zoom_footprint_size(SIZE, 2)
        coarse = gal.drawImage(nx=SIZE, ny=SIZE, scale=2 * SCALE).array.astype(np.float64)
        for dy, dx in [(0.0, 0.0), (0.3, -0.45)]:
            oracle = gal.drawImage(nx=size, ny=size, scale=SCALE, offset=(dx, dy)).array.astype(np.float64)
            with self.subTest(dy=dy, dx=dx):
                placed = zoom_place_stamps(coarse[None, None], np.array([[50 + dy, 80 + dx]]), 2)[0, 0]
                self.assertEqual(placed.shape, oracle.shape)
                self.assertAlmostEqual(placed.sum() / coarse.sum(), 1.0, delta=1e-5)
                self.assertLess(np.linalg.norm(placed - oracle) / np.linalg.norm(oracle), 0.025)
                box = zoom_place_stamps(coarse[None, None], np.array([[50 + dy, 80 + dx]]), 2, kernel="box")[0, 0]
                self.assertLess(np.linalg.norm(box - oracle) / np.linalg.norm(oracle), 0.05)
        # What zoom 1 can hold of this galaxy: the flux in the central 45 x 45 of the oracle.
        c = size // 2
        held = oracle[c - SIZE // 2 : c + SIZE // 2 + 1, c - SIZE // 2 : c + SIZE // 2 + 1].sum()
        self.assertLess(held / gal.flux, 0.93)
        self.assertGreater(coarse.sum() / gal.flux, 0.98)

    def test_binning_matches_galsim(self):
        """A 0.2"/px GalSim image binned by 2 around a float centre is GalSim's 0.4"/px drawing."""
        gal = _big_galaxy()
        for zoom in (2, 3):
            coarse = gal.drawImage(nx=SIZE, ny=SIZE, scale=zoom * SCALE).array.astype(np.float64)
            for cy, cx in [(100.0, 120.0), (99.7, 120.4)]:
                fine = _draw(gal, 260, 220, cx, cy)
                binned = zoom_bin_stamps(fine[None], np.array([[cy, cx]]), zoom, SIZE)[0, 0]
                with self.subTest(zoom=zoom, cy=cy, cx=cx):
                    self.assertLess(np.linalg.norm(binned - coarse) / np.linalg.norm(coarse), 0.01)
                    self.assertAlmostEqual(binned.sum() / coarse.sum(), 1.0, delta=5e-3)

    def test_placement_windows_hold_every_placement(self):
        """Windows pasted back at their starts give the full placement matrices, at any shift,
        zoom and edge, and a region touched by a placed stamp is the same either way."""
        rng = np.random.default_rng(3)
        length, size = 70, 9
        offsets = np.concatenate([rng.uniform(-8, 68, 12), [-20.0, 80.0]])  # two entirely outside
        for name, full in (("shift", placement_matrices(offsets, length, size)),
                           ("zoom", zoom_placement_matrices(offsets + 4, length, size,
                                                            rng.integers(1, 4, len(offsets))))):
            with self.subTest(name):
                windows, start = placement_windows(full)
                rebuilt = np.zeros((len(offsets), length + windows.shape[1], size), np.float32)
                for i in range(len(offsets)):
                    rebuilt[i, start[i]:start[i] + windows.shape[1]] = windows[i]
                np.testing.assert_array_equal(rebuilt[:, :length], full)
                self.assertFalse(rebuilt[:, length:].any())
                self.assertLess(windows.shape[1], length)
                stamp = rng.normal(size=(size, size))
                np.testing.assert_allclose(np.einsum("nrs,st,nqt->nrq", rebuilt, stamp, rebuilt)[:, :length, :length],
                                           np.einsum("nrs,st,nqt->nrq", full, stamp, full), atol=1e-5)
        with self.assertRaises(ValueError):
            placement_windows(placement_matrices(offsets, length, size), window=size - 1)

    def test_bad_zoom(self):
        for zoom in (0, 5, 1.5, -1):
            with self.subTest(zoom=zoom), self.assertRaises(ValueError):
                zoom_placement_matrices(np.array([3.0]), 10, 5, zoom)


class ImportTestCase(lsst.utils.tests.TestCase):
    def test_doctests(self):
        result = doctest.testmod(geometry)
        self.assertGreater(result.attempted, 5)
        self.assertEqual(result.failed, 0)

    def test_importable_without_keras(self):
        """Tasks and evaluation import the geometry; that must not load a Keras backend."""
        code = ("import sys; import lsst.meas.madness.engine.geometry; "
                "import lsst.meas.madness.evaluation.stamps; "
                "print('keras' in sys.modules, 'tensorflow' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        self.assertEqual(out.split(), ["False", "False"])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
