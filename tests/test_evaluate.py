"""``madness evaluate``: every available method side by side on a few small simulated fields."""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import math
import shutil
import tempfile
import unittest
from pathlib import Path

import lsst.utils.tests
import numpy as np
from astropy.table import Table

from lsst.meas.madness.cli import main
from lsst.meas.madness.engine.wings import OUTSKIRTS_START
from lsst.meas.madness.errors import MadnessValueError
from lsst.meas.madness.evaluation.fields import iter_test_fields, simulate_test_fields
from lsst.meas.madness.evaluation.methods import (
    LEGACY_PSF_SIZE,
    METHOD_NAMES,
    PSF_SIZE,
    method_availability,
    psf_images,
)
from lsst.meas.madness.evaluation.report import KAPPA_BLENDED, KAPPA_MAX, read_measurements
from lsst.meas.madness.evaluation.resources import MemoryMeter
from lsst.meas.madness.evaluation.runner import run_evaluation
from lsst.meas.madness.simulation import LsstConditions, TestFieldsConfig
from utils import quick_bundle_path
import pytest

# Code above the engine: run on the default Keras backend only (tests/conftest.py).
pytestmark = pytest.mark.one_backend

BANDS = "ugrizy"


def bright_catalog(n: int, seed: int = 0) -> Table:
    """CatSim-format bright, ordinary-sized bulge+disk galaxies (r 20-22.5)."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(20.0, 22.5, n)
    t = Table()
    t["galtileid"] = np.arange(n, dtype=np.int64) + 1000
    t["ra"] = np.zeros(n)
    t["dec"] = np.zeros(n)
    t["redshift"] = rng.uniform(0.1, 1.5, n)
    for b, colour in zip(BANDS, [0.9, 0.4, 0.0, -0.2, -0.3, -0.35]):
        t[f"{b}_ab"] = r + colour + rng.normal(0, 0.1, n)
    bulge = rng.uniform(0.0, 0.4, n)
    t["fluxnorm_bulge"] = bulge
    t["fluxnorm_disk"] = 1.0 - bulge
    t["fluxnorm_agn"] = np.zeros(n)
    a = rng.uniform(0.3, 0.8, n)
    q = rng.uniform(0.5, 1.0, n)
    t["a_d"], t["b_d"] = a, a * q
    t["a_b"], t["b_b"] = 0.5 * a, 0.5 * a * q
    pa = rng.uniform(0.0, 180.0, n)
    t["pa_disk"], t["pa_bulge"] = pa, pa
    return t


# Small, moderately blended fields: 4-5 bright galaxies with centres in a 36x36 px box, so that
# even the quick test model (trained on synthetic galaxies) beats no deblending on them.
SMALL_FIELDS = TestFieldsConfig(field_size=95, inner=36, min_galaxies=4, max_galaxies=5, shard_size=2)
N_FIELDS = 2
FIELD_PSF = 95  # the widest odd PSF image these fields hold


class EvaluateCliTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="madness-evaluate-"))
        cls.fields = simulate_test_fields(cls.tmp / "fields", N_FIELDS, seed=4, config=SMALL_FIELDS,
                                          catalog=bright_catalog(40), progress=False).directory
        cls.output = cls.tmp / "run"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cls.rc = main(["evaluate", "--fields", str(cls.fields), "--bundle", str(quick_bundle_path()),
                           "--output", str(cls.output), "--no-progress"])
        cls.stdout = out.getvalue()
        cls.summary = json.loads((cls.output / "summary.json").read_text())
        cls.available = {name for name, reason in method_availability().items() if reason is None}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_outputs(self):
        self.assertEqual(self.rc, 0)
        for name in ("measurements.json", "summary.json", "report.md"):
            self.assertTrue((self.output / name).exists(), name)
        figures = sorted(p.name for p in (self.output / "figures").glob("*.png"))
        self.assertEqual(len(figures), 7, figures)
        report = (self.output / "report.md").read_text()
        self.assertIn("paper", report)
        self.assertIn("s / galaxy", report)
        self.assertIn("report:", self.stdout)

    def test_summary_keys_and_numbers(self):
        s = self.summary
        self.assertEqual(s["run"]["n_fields"], N_FIELDS)
        self.assertEqual(s["run"]["bands"], list(BANDS))
        self.assertEqual(set(s["methods"]), set(METHOD_NAMES))
        for name in ("blended", "vae_deblender", "madness"):
            self.assertEqual(s["methods"][name]["status"], "ok", s["methods"][name].get("reason"))
        ran = [n for n, m in s["methods"].items() if m["status"] == "ok"]
        self.assertLessEqual(set(ran), self.available)  # an installed one may still fail its setup
        for name in ran:
            m = s["methods"][name]
            r = m["bands"]["r"]
            self.assertTrue(math.isfinite(r["mean_abs_flux_residual"]), name)
            self.assertGreaterEqual(r["n_kappa_cut"], 6)
            if name != "blended":
                for key in ("mean_cosine", "mean_ssim", "std_e1_residual", "std_e2_residual"):
                    self.assertTrue(math.isfinite(r[key]), (name, key))
                self.assertTrue(-1 <= r["mean_cosine"] <= 1)
                res = m["resources"]
                self.assertEqual(res["n_fields"], N_FIELDS)
                self.assertEqual(res["failed_fields"], 0)
                self.assertGreater(res["seconds_per_galaxy"], 0)
                self.assertGreater(res["peak_rss_mb"], 50)
                self.assertGreaterEqual(res["warmup_seconds"], 0)
        self.assertEqual(s["paper"]["mean_abs_flux_residual"]["madness"], 0.020)

    def test_absent_comparators_are_listed(self):
        s = self.summary
        absent = {n for n, m in s["methods"].items() if m["status"] != "ok"}
        self.assertLessEqual(set(METHOD_NAMES) - self.available, absent)
        self.assertEqual(set(s["absent"]), absent)
        report = (self.output / "report.md").read_text()
        for name in absent:
            self.assertEqual(s["methods"][name]["status"], "absent")
            self.assertTrue(s["methods"][name]["reason"])
            self.assertIn(f"`{name}`", report)
            self.assertIn(name, self.stdout)
        if absent:
            self.assertIn("absent:", self.stdout)

    def test_madness_beats_no_deblending_on_blended_galaxies(self):
        bands, galaxies, metrics = read_measurements(self.output / "measurements.json")
        j = bands.index("r")
        kappa = galaxies["kappa"][:, j]
        blended = (kappa >= KAPPA_BLENDED) & (kappa <= KAPPA_MAX)
        self.assertGreaterEqual(blended.sum(), 3)
        none = np.nanmean(np.abs(metrics["blended"]["flux_residual"][blended, j]))
        madness = np.nanmean(np.abs(metrics["madness"]["flux_residual"][blended, j]))
        self.assertLess(madness, none)
        # the same galaxies, in the same order, for every method
        for name, m in metrics.items():
            self.assertEqual(m["flux_residual"].shape, (len(kappa), len(bands)), name)

    def test_time_and_memory_per_field(self):
        rows = {n: m for n, m in self.summary["methods"].items() if m["status"] == "ok" and n != "blended"}
        self.assertTrue(rows)
        for name, m in rows.items():
            self.assertIsNotNone(m["resources"]["peak_increase_mb"], name)

    def test_resume(self):
        """An interrupted run continues after its last finished field and gives the same measurements."""
        partial = self.output / "partial"
        self.assertEqual(len(list(partial.glob("field-*.npz"))), N_FIELDS)
        # a run on other fields may not mix its fields with these
        with self.assertRaisesRegex(MadnessValueError, "another evaluation run.*fields"):
            run_evaluation(iter_test_fields(self.fields), ["blended"], checkpoint=partial,
                           info={"fields": "x"}, progress=False)
        tmp = Path(tempfile.mkdtemp(prefix="madness-evaluate-resume-"))
        try:
            copy = tmp / "partial"
            shutil.copytree(partial, copy)
            for path in copy.glob("field-000001.*"):  # the second field was never finished
                path.unlink()
            # A checkpoint written before the precision was part of the signature is float32's.
            run = json.loads((copy / "run.json").read_text())
            self.assertEqual(run.pop("precision"), "float32")
            (copy / "run.json").write_text(json.dumps(run))
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = main(["evaluate", "--fields", str(self.fields), "--bundle", str(quick_bundle_path()),
                           "--output", str(tmp), "--no-progress", "--no-figures"])
            self.assertEqual(rc, 0)
            summary = json.loads((tmp / "summary.json").read_text())
            self.assertEqual(summary["run"]["n_fields"], N_FIELDS)
            self.assertEqual(summary["run"]["resumed_fields"], 1)
            self.assertEqual(len(list(copy.glob("field-*.npz"))), N_FIELDS)
            bands, galaxies, metrics = read_measurements(self.output / "measurements.json")
            bands2, galaxies2, metrics2 = read_measurements(tmp / "measurements.json")
            np.testing.assert_array_equal(galaxies["field_id"], galaxies2["field_id"])
            np.testing.assert_allclose(galaxies["flux_isolated"], galaxies2["flux_isolated"], rtol=1e-6)
            for name in ("blended", "madness"):  # deterministic: the rerun field equals the first run's
                np.testing.assert_allclose(metrics[name]["flux_residual"], metrics2[name]["flux_residual"],
                                           rtol=1e-5, atol=1e-7, err_msg=name)
            # --rerun madness: MADNESS computed again (deterministic: the same numbers), the other
            # methods' stored results kept (their files' entries untouched).
            scarlet_entry = json.loads((copy / "field-000000.json").read_text())
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(["evaluate", "--fields", str(self.fields), "--bundle", str(quick_bundle_path()),
                           "--output", str(tmp), "--no-progress", "--no-figures", "--rerun", "madness"])
            self.assertEqual(rc, 0)
            summary = json.loads((tmp / "summary.json").read_text())
            self.assertNotIn("resumed_fields", summary["run"])  # every field ran MADNESS again
            after = json.loads((copy / "field-000000.json").read_text())
            self.assertEqual(set(after), set(scarlet_entry))
            for name in set(after) - {"madness"}:
                self.assertEqual(after[name], scarlet_entry[name], name)
            _, _, metrics3 = read_measurements(tmp / "measurements.json")
            for name in metrics:
                np.testing.assert_allclose(metrics[name]["flux_residual"], metrics3[name]["flux_residual"],
                                           rtol=1e-5, atol=1e-7, err_msg=name)
            # A subset of the stored methods is loaded, not run again.
            with contextlib.redirect_stdout(io.StringIO()):
                main(["evaluate", "--fields", str(self.fields), "--bundle", str(quick_bundle_path()),
                      "--methods", "blended", "madness", "--output", str(tmp), "--no-progress", "--no-figures"])
            summary = json.loads((tmp / "summary.json").read_text())
            self.assertEqual(summary["run"]["resumed_fields"], N_FIELDS)
            self.assertEqual(set(summary["methods"]), {"blended", "madness"})
            # --restart discards the finished fields
            with contextlib.redirect_stdout(io.StringIO()):
                main(["evaluate", "--fields", str(self.fields), "--bundle", str(quick_bundle_path()),
                      "--methods", "blended", "--output", str(tmp), "--no-progress", "--no-figures",
                      "--restart"])
            summary = json.loads((tmp / "summary.json").read_text())
            self.assertNotIn("resumed_fields", summary["run"])
            self.assertEqual(set(summary["methods"]), {"blended"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


    def test_precision(self):
        """--precision runs MADNESS's MAP steps in bfloat16: recorded, never mixed with float32."""
        with self.assertRaisesRegex(MadnessValueError, "another evaluation run.*precision.*--rerun"):
            run_evaluation(iter_test_fields(self.fields), ["blended"], checkpoint=self.output / "partial",
                           bundle=str(quick_bundle_path()), info={"fields": f"TestFields {self.fields}"},
                           precision="mixed_bfloat16", progress=False)
        tmp = Path(tempfile.mkdtemp(prefix="madness-evaluate-bf16-"))
        try:
            # A checkpoint that does not say which model it ran (before the bundle's fingerprint
            # was recorded; "the packaged default" changes when a model is shipped) is not
            # continued with the model methods' stored results.
            old = tmp / "old" / "partial"
            shutil.copytree(self.output / "partial", old)
            run = json.loads((old / "run.json").read_text())
            self.assertEqual(len(run.pop("bundle_fingerprint")), 64)
            (old / "run.json").write_text(json.dumps(run))
            with self.assertRaisesRegex(MadnessValueError, "bundle_fingerprint.*--rerun"):
                run_evaluation(iter_test_fields(self.fields), ["blended"], checkpoint=old,
                               bundle=str(quick_bundle_path()), info={"fields": f"TestFields {self.fields}"},
                               progress=False)
            # Another precision (or bundle) with every model method rerun: the peers' stored
            # results are kept, the model's recomputed, and the run's signature follows.
            copy = tmp / "copy"
            shutil.copytree(self.output / "partial", copy / "partial")
            stored = {p.name: json.loads(p.read_text()) for p in (copy / "partial").glob("field-*.json")}
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(["evaluate", "--fields", str(self.fields), "--bundle", str(quick_bundle_path()),
                           "--methods", "blended", "vae_deblender", "madness", "--precision", "mixed_bfloat16",
                           "--rerun", "madness", "vae_deblender", "--output", str(copy), "--no-progress",
                           "--no-figures"])
            self.assertEqual(rc, 0)
            self.assertEqual(json.loads((copy / "partial" / "run.json").read_text())["precision"], "mixed_bfloat16")
            for name, before in stored.items():
                after = json.loads((copy / "partial" / name).read_text())
                self.assertEqual(after["blended"], before["blended"])
                self.assertNotEqual(after["madness"], before["madness"])  # its own time, at least
            copy_summary = json.loads((copy / "summary.json").read_text())
            self.assertIn("MAP steps in mixed_bfloat16", copy_summary["methods"]["madness"]["config"]["config"])
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(["evaluate", "--fields", str(self.fields), "--bundle", str(quick_bundle_path()),
                           "--methods", "blended", "madness", "--max-fields", "1", "--precision",
                           "mixed_bfloat16", "--output", str(tmp), "--no-progress", "--no-figures"])
            self.assertEqual(rc, 0)
            summary = json.loads((tmp / "summary.json").read_text())
            self.assertIn("MAP steps in mixed_bfloat16", summary["methods"]["madness"]["config"]["config"])
            self.assertIn("MAP steps in float32", self.summary["methods"]["madness"]["config"]["config"])
            # The same galaxies' fluxes as the float32 run's to bfloat16's precision, not identical.
            _, g32, m32 = read_measurements(self.output / "measurements.json")
            _, g16, m16 = read_measurements(tmp / "measurements.json")
            n = len(g16["field_id"])
            a, b = m32["madness"]["flux_residual"][:n], m16["madness"]["flux_residual"]
            self.assertLess(float(np.nanmax(np.abs(a - b))), 0.05)
            self.assertGreater(float(np.nanmax(np.abs(a - b))), 0.0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


    def test_psf_size(self):
        """One PSF size for every method of a run: part of the signature, odd, and MADNESS draws
        PSF wings only from a PSF wider than its stamp."""
        from lsst.meas.madness.evaluation.methods import FieldInput, MadnessMethod

        # The default PSF (201 px) is wider than these 95-px fields: every method got 95 px.
        self.assertEqual((self.summary["run"]["psf_size"], self.summary["run"]["psf_size_requested"]),
                         (FIELD_PSF, PSF_SIZE))
        with self.assertRaisesRegex(MadnessValueError, "another evaluation run.*psf_size"):
            run_evaluation(iter_test_fields(self.fields), ["blended"], checkpoint=self.output / "partial",
                           bundle=str(quick_bundle_path()), info={"fields": f"TestFields {self.fields}"},
                           psf_size=61, progress=False)
        tmp = Path(tempfile.mkdtemp(prefix="madness-evaluate-psf-"))
        try:
            for bad in ("40", "1"):
                with self.assertRaises(SystemExit, msg=bad), contextlib.redirect_stderr(io.StringIO()):
                    main(["evaluate", "--fields", str(self.fields), "--output", str(tmp / "bad"), "--no-progress",
                          "--psf-size", bad])
                self.assertFalse((tmp / "bad" / "partial").exists(), bad)  # refused before any field
            # A checkpoint from before --psf-size ran with 41-px PSF images (LEGACY_PSF_SIZE): it
            # continues at 41 px, not at the default.
            old = tmp / "legacy" / "partial"
            shutil.copytree(self.output / "partial", old)
            run = json.loads((old / "run.json").read_text())
            self.assertEqual(run.pop("psf_size"), FIELD_PSF)
            (old / "run.json").write_text(json.dumps(run))
            kwargs = dict(bundle=str(quick_bundle_path()), info={"fields": f"TestFields {self.fields}"},
                          progress=False)
            with self.assertRaisesRegex(MadnessValueError, "another evaluation run.*psf_size"):
                run_evaluation(iter_test_fields(self.fields), ["blended"], checkpoint=old, **kwargs)
            with contextlib.redirect_stdout(io.StringIO()):
                run_evaluation(iter_test_fields(self.fields), ["blended"], checkpoint=old, psf_size=LEGACY_PSF_SIZE,
                               **kwargs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        field = next(iter_test_fields(self.fields))
        variance = np.broadcast_to(np.asarray(field.variance, np.float32)[:, None, None], field.image.shape)
        data = FieldInput(field.field_id, field.image, variance.copy(), field.centers_xy, tuple(field.bands))
        conditions = LsstConditions.from_surveycodex(bands=tuple(field.bands))
        outputs = {}
        for size in (41, 101):
            method = MadnessMethod(tuple(field.bands), conditions, str(quick_bundle_path()), psf_size=size,
                                   map_settings={"max_iter": 5, "min_iter": 5, "fit_envelopes": False,
                                                 "refit_beside_brighter": None})
            method.setup()
            outputs[size] = method.deblend(data)
            self.assertIn(f"{size}x{size} PSF", method.describe()["config"])
        self.assertIsNone(outputs[41].envelopes)  # a 41-px PSF holds nothing beyond a 45-px stamp
        self.assertEqual(sorted(outputs[101].envelope_sources.tolist()), list(range(field.n_galaxies)))
        # The fit is the same (no refit beside a brighter neighbour, whose image is cleaned of
        # its neighbours' wings): the models agree within 12 px of each centre (beyond it each PSF
        # completes the outskirts the decoder leaves dark, engine.wings).
        size = outputs[41].models.shape[-1]
        y, x = np.mgrid[:size, :size] - size // 2
        near = np.hypot(y, x) < OUTSKIRTS_START
        np.testing.assert_array_equal(outputs[41].models[..., near], outputs[101].models[..., near])

    def test_map_settings(self):
        """--map-setting sets MADNESS's engine: part of the run's signature; with no MAP step and
        nothing but the guesses, MADNESS's galaxies are the VAE-deblender's."""
        common = ["evaluate", "--fields", str(self.fields), "--bundle", str(quick_bundle_path()),
                  "--no-progress", "--no-figures"]
        with self.assertRaisesRegex(MadnessValueError, "another evaluation run.*map_settings.*--rerun"):
            run_evaluation(iter_test_fields(self.fields), ["blended"], checkpoint=self.output / "partial",
                           bundle=str(quick_bundle_path()), info={"fields": f"TestFields {self.fields}"},
                           map_settings={"max_iter": 0}, progress=False)
        with self.assertRaisesRegex(MadnessValueError, "precision"):
            run_evaluation(iter_test_fields(self.fields), ["blended"], map_settings={"precision": "float32"},
                           progress=False)
        tmp = Path(tempfile.mkdtemp(prefix="madness-evaluate-settings-"))
        try:
            for bad in ("max_iter=-1", "no_such_field=1", "max_iter", "fit_envelopes=maybe"):
                with self.assertRaises(SystemExit, msg=bad), contextlib.redirect_stderr(io.StringIO()):
                    main(common + ["--output", str(tmp / "bad"), "--map-setting", bad])
                self.assertFalse((tmp / "bad" / "partial").exists(), bad)  # refused before any field
            copy = tmp / "copy"
            shutil.copytree(self.output / "partial", copy / "partial")
            stored = {p.name: json.loads(p.read_text()) for p in (copy / "partial").glob("field-*.json")}
            # No step, no zoom, no envelope, no PSF wing and no refit: MADNESS is then the decoded guesses.
            # (and every start the encoder's: with init_log_prior_floor a start far outside the
            # prior is pulled into it, which the VAE-deblender does not do)
            settings = ["max_iter=0", "min_iter=0", "max_zoom=1", "fit_envelopes=false", "psf_wings=false",
                        "init_log_prior_floor=none", "refit_beside_brighter=none"]
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(common + ["--methods", "blended", "vae_deblender", "madness", "--output", str(copy),
                                    "--rerun", "madness", "vae_deblender"]
                          + [arg for item in settings for arg in ("--map-setting", item)])
            self.assertEqual(rc, 0)
            run = json.loads((copy / "partial" / "run.json").read_text())
            self.assertEqual(run["map_settings"], {"fit_envelopes": False, "max_iter": 0, "max_zoom": 1,
                                                   "min_iter": 0, "psf_wings": False, "init_log_prior_floor": None,
                                                   "refit_beside_brighter": None})
            for name, before in stored.items():  # the peers' stored results kept
                self.assertEqual(json.loads((copy / "partial" / name).read_text())["blended"], before["blended"])
            summary = json.loads((copy / "summary.json").read_text())
            config = summary["methods"]["madness"]["config"]
            self.assertIn("0-0 steps", config["config"])
            self.assertEqual(config["map_settings"]["max_iter"], 0)
            self.assertEqual(summary["run"]["map_settings"]["max_zoom"], 1)
            # No step: each galaxy's model is its encoder guess decoded at its peak, which is
            # what the VAE-deblender measures (computed by its own code path).
            _, _, metrics = read_measurements(copy / "measurements.json")
            for key in ("flux_residual", "cosine"):
                np.testing.assert_allclose(metrics["madness"][key], metrics["vae_deblender"][key],
                                           rtol=1e-4, atol=1e-5, err_msg=key)
            _, _, default = read_measurements(self.output / "measurements.json")
            self.assertFalse(np.allclose(default["madness"]["flux_residual"], metrics["madness"]["flux_residual"],
                                         rtol=1e-3, atol=1e-4))  # the default engine does fit
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class EvaluateUnitTestCase(lsst.utils.tests.TestCase):
    def test_map_setting_overrides(self):
        """``KEY=VALUE`` strings become typed MapSettings fields, or a clear error."""
        from lsst.meas.madness import MapSettings
        from lsst.meas.madness.errors import MadnessRangeError

        self.assertEqual(MapSettings.parse_overrides(["max_iter=60", " rtol = 0.02", "fit_envelopes=false",
                                                      "zoom_choice=fit", "second_start_rate=0.02"]),
                         {"max_iter": 60, "rtol": 0.02, "fit_envelopes": False, "zoom_choice": "fit",
                          "second_start_rate": 0.02})
        self.assertEqual(MapSettings.parse_overrides(["second_start_rate=None", "compact=1"]),
                         {"second_start_rate": None, "compact": True})
        self.assertEqual(MapSettings.parse_overrides([]), {})
        for bad, pattern in [("no_such=1", "no field 'no_such'"), ("max_iter=1.5", "type int"),
                             ("fit_envelopes=maybe", "type bool"), ("rtol=none", "type float"),
                             ("max_iter", "KEY=VALUE"), ("zoom_choice=nearest", "zoom_choice")]:
            with self.assertRaisesRegex(MadnessValueError, pattern, msg=bad):
                MapSettings.parse_overrides([bad])
        with self.assertRaisesRegex(MadnessValueError, "twice"):
            MapSettings.parse_overrides(["rtol=0.1", "rtol=0.2"])
        with self.assertRaises(MadnessRangeError):
            MapSettings.parse_overrides(["max_zoom=9"])

    def test_simulated_and_band_subset(self):
        """``--simulate`` draws fields itself (``--subpixel``: off the pixel centres); ``--bands`` limits
        what is measured."""
        tmp = Path(tempfile.mkdtemp(prefix="madness-evaluate-sim-"))
        try:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = main(["evaluate", "--simulate", "1", "--seed", "3", "--subpixel", "--methods", "blended",
                           "scarlet_lite", "--bands", "gr", "--output", str(tmp), "--no-progress",
                           "--no-figures"])
            self.assertEqual(rc, 0)
            summary = json.loads((tmp / "summary.json").read_text())
            self.assertEqual(summary["run"]["bands"], ["g", "r"])
            self.assertEqual(set(summary["methods"]), {"blended", "scarlet_lite"})
            self.assertGreaterEqual(summary["run"]["n_galaxies"], 12)
            r_band = summary["methods"]["blended"]["bands"]["r"]
            self.assertTrue(math.isfinite(r_band["mean_abs_flux_residual"]))
            if method_availability(["scarlet_lite"])["scarlet_lite"] is not None:
                self.assertIn("scarlet_lite", summary["absent"])
            fields = list(iter_test_fields(tmp / "fields"))
            self.assertEqual(len(fields), 1)
            f = fields[0]
            self.assertEqual(f.image.shape, (6, 205, 205))
            self.assertEqual(f.isolated.shape, (f.n_galaxies, 6, 205, 205))
            offsets = np.abs(f.centers_xy - np.round(f.centers_xy))
            self.assertGreater(offsets.max(), 0.1)  # the centres are off the pixel grid
            # ... and the truth image is drawn there: its r-band centroid follows the float centre
            iso = f.isolated[:, 2]
            yy, xx = np.mgrid[:205, :205]
            bright = int(np.argmax(iso.sum(axis=(1, 2))))
            cx = (iso[bright] * xx).sum() / iso[bright].sum()
            self.assertAlmostEqual(cx, f.centers_xy[bright, 0], delta=0.15)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_psf_images(self):
        conditions = LsstConditions.from_surveycodex()
        psf = psf_images(conditions)
        c = PSF_SIZE // 2
        self.assertEqual(psf.shape, (6, PSF_SIZE, PSF_SIZE))
        np.testing.assert_allclose(psf.sum(axis=(1, 2)), 1.0, rtol=1e-6)
        self.assertTrue(np.all(psf[:, c, c] == psf.max(axis=(1, 2))))
        # wider PSF in u (0.9") than in y (0.76"): lower peak
        self.assertLess(psf[0, c, c], psf[5, c, c])

    def test_docstring_examples(self):
        from lsst.meas.madness.evaluation import resources

        result = doctest.testmod(resources, optionflags=doctest.ELLIPSIS)
        self.assertEqual(result.failed, 0)

    def test_memory_meter(self):
        # The block is a fresh anonymous mapping, touched page by page: a numpy array may come
        # from heap memory that malloc kept resident after an earlier free (glibc raises its mmap
        # threshold after large frees; TensorFlow lowers the trim threshold, JAX does not), and
        # then touching it raises no high-water mark (seen under JAX: increases [0, 0, 0]).
        # Another thread can still free memory meanwhile and hide the increase in one sample: a
        # working meter shows it in one of three tries, a broken one in none.
        import mmap

        size, page = 40_000_000, mmap.PAGESIZE
        increases = []
        for _ in range(3):
            meter = MemoryMeter()
            meter.start()
            block = mmap.mmap(-1, size)
            for offset in range(0, size, page):  # 40 MB touched
                block[offset] = 1
            sample = meter.stop()
            self.assertEqual(block[size - size % page - page], 1)
            block.close()
            if not sample.resettable:
                return
            increases.append(sample.increase)
            if sample.increase > 30_000_000:
                return
        self.fail(f"no sample saw the 40 MB block: increases {increases}")


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    # SkyPy's kcorrect templates (--simulate's catalogue) stay open for the life of the process.
    ignore_regexps = [r"skypy/data/kcorrect/"]


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
