"""Settings of the MAP optimisation (paper section 3.5), as one frozen dataclass.

The engine never sees ``pex_config``: the Task maps its config fields to these keywords,
the way GalSim objects take a ``GSParams``.
"""

from __future__ import annotations

__all__ = ["MapSettings"]

import dataclasses
import math
from collections.abc import Iterable

from ..errors import MadnessRangeError, MadnessValueError
from ..precision import PRECISIONS

ZOOM_CHOICES = ("guess", "fit")
"""How ``MapSettings.max_zoom > 1`` chooses each source's zoom."""

REFIT_STARTS = ("guess", "fit")
"""Where ``MapSettings.refit_beside_brighter``'s refits start (``MapSettings.refit_start``)."""

OPTIMIZERS = ("adam", "lbfgs")
"""Optimisers of the MAP fit (``MapSettings.optimizer``)."""

REFIT_STOP_FLOOR = 1.0
"""``stop_floor`` of ``MapSettings.refit_beside_brighter``'s refits when the settings have none."""

ENVELOPE_DOMINANCE = 10.0
"""A source gets no envelope (``MapSettings.fit_envelopes``) when a source this many times
brighter lies within four stamp sides: its stamp edge then holds that galaxy's light, not its own."""
ENVELOPE_REACH = 4
"""Stamp sides (Chebyshev) within which a much brighter source denies an envelope."""


@dataclasses.dataclass(frozen=True)
class MapSettings:
    """Knobs of the MAP deblender, with the paper's values as defaults except ``fit_amplitudes``,
    ``prior_weight``, ``rtol``, ``max_zoom`` and ``fit_envelopes``, chosen on validation
    TestFields (``doc/engine.md``, "Defaults chosen on validation fields";
    ``doc/large-galaxies.md``, "Envelopes").

    Parameters
    ----------
    learning_rate : `float`
        Initial Adam learning rate in latent units per step (0.05).
    lr_decay : `float`
        Factor applied to the learning rate every ``lr_decay_steps`` steps (0.8), in (0, 1].
    lr_decay_steps : `int`
        Steps between learning-rate decays (30).
    max_iter : `int`
        Maximum number of optimisation steps per blend (200).
    min_iter : `int`
        Steps before the stopping rule may stop a blend (40).
    ewma_window : `int`
        Window of the exponentially weighted moving average of the objective (15): the
        EWMA uses ``alpha = 2 / (window + 1)``, and decreases are measured over this many steps.
    rtol : `float`
        A blend stops when its EWMA decreased, over the last ``ewma_window`` steps, by less than
        ``rtol`` times its decrease over the first ``ewma_window`` steps (0.01; the paper's 0.05
        stops before faint galaxies' shapes have converged: std e1 residual 0.120 -> 0.098 on
        validation fields, for 20% more time).
    stop_atol : `float`, optional
        With it a blend also stops only once its EWMA fell by at most ``stop_atol`` times its
        number of sources over the last ``ewma_window`` steps (objective units, chi^2 / 2): a
        start far from the optimum makes the first steps' fall, the reference of ``rtol``, so
        large that the blend would stop while still falling by thousands. `None` (default): the
        relative rule alone. On 20 validation fields 1 and 5 left the fluxes as they were and the
        std e1 residual at 0.094-0.095 against 0.090 (``doc/engine.md``, step 5).
    stop_floor : `float`, optional
        With it a blend also stops, after ``min_iter`` steps, once its EWMA fell by at most
        ``stop_floor`` times its number of sources over the last ``ewma_window`` steps
        (objective units, chi^2 / 2), whatever its first fall: a blend of one faint galaxy
        starts near its optimum, its first steps fall by a few units, and the relative rule
        keeps it to the step cap while it wanders within its noise. `None` (default): the
        relative rule alone.
    freeze_drift : `float`, optional
        Per-source stop (`lsst.meas.madness.engine.stopping.DriftFreezing`): after ``min_iter``
        steps a source each of whose variables moved, net over the last ``ewma_window`` steps,
        less than ``freeze_drift`` times the distance Adam could cover in them (the learning
        rates summed, times the variable's step scale) is frozen at the mean of its variables
        over those steps (the centre of Adam's swing about the optimum): its model is taken out
        of the data and it leaves the compiled step, so the blend's later steps decode only the
        sources still moving. A blend whose sources are all frozen has converged. `None`
        (default): every source moves until its blend stops.
    prior_weight : `float`
        Weight of the flow log-prior against the Gaussian log-likelihood (0.1 since stop 59; 1
        is the paper's posterior, whose prior pulls faint galaxies round: r mean abs(dF/F)
        0.0183 -> 0.0167 and std e1 residual 0.133 -> 0.113 on validation fields at 0.25; with
        the symmetry prior 0.25 -> 0.1 gives std e1 residual 0.084 -> 0.081 on 60 validation
        fields in 0.8x the steps, ``doc/engine.md``, "A lighter flow prior").
    symmetry_weight : `float`
        Weight of each source's asymmetry about its centre
        (`lsst.meas.madness.engine.objective.stamp_asymmetry`: 0 for a model equal to its own
        rotation by 180 degrees, 1 for light with no counterpart across the centre; it does not
        depend on the flux) added to the objective: a faint model that stretches into a
        neighbour's light pays for it, a bright one hardly (its chi^2 is far larger). 3000 (since
        stop 58; chosen on 20 + 60 validation fields: std e1 residual 0.094 -> 0.084, every band's
        flux error lower, ``doc/engine.md``, "Symmetry prior"); 0: none (the paper).
    max_sources : `int`
        Largest number of peaks accepted in one blend; more raises `MadnessRangeError` so the
        caller can flag the parent (the task's ``maxNumberOfPeaks`` maps here).
    batch_sources : `int`
        Largest number of sources decoded in one compiled step when many blends are
        deblended together; bounds memory (about 4 MB per source for the paper-size decoder).
    compact : `bool`
        Drop finished blends from the compiled batch: on TensorFlow as soon as one stops; on
        JAX, which compiles once per shape, once half of them have stopped (to power-of-two
        blend counts and multiples of 8 sources, so few shapes are compiled).
    adam_beta1, adam_beta2, adam_epsilon : `float`
        Adam moments and epsilon (Keras defaults).
    fit_offsets : `bool`
        Fit a position offset per source with its latents, for peaks that are not the true
        centres (detected peaks): each model is moved by its peak's sub-pixel remainder plus the
        offset. Off by default (the peaks are taken as the centres). Each blend may name the
        sources that move (``fit_offsets`` of `MadnessDeblender.deblend`); the others, and
        every zoomed source, stay on their peaks.
    offset_max : `float`
        Bound on each fitted offset component, pixels (1: a detected peak is within a pixel of
        the centre); the offset is ``offset_max * tanh(u)`` of a free ``u``.
    offset_sigma : `float`
        Width of the weak Gaussian prior on the offsets, pixels.
    fit_amplitudes : `bool`
        Fit a flux factor per source and band, ``exp(a_b)``, with its latents: the decoder
        draws the galaxy and the factors correct its flux in each band where its reach falls
        short (bright galaxies, colours; ``doc/engine.md``). On by default, a departure from
        the paper measured on validation TestFields (r-band mean abs(dF/F) 0.0216 -> 0.0182,
        g-r colour scatter 0.185 -> 0.158); False, with ``prior_weight=1``, ``rtol=0.05``,
        ``max_zoom=1`` and ``fit_envelopes=False``, gives the paper's MAP.
    amplitude_sigma : `float`
        Width of the Gaussian prior on each log factor ``a_b`` (0.5; 0.5-3 measured alike,
        0.05-0.1 keep part of the flux error).
    amplitude_step_scale : `float`
        Adam's learning rate of the log flux factors relative to the latents' (1).
    precision : `str`
        Compute precision of the decoder inside the MAP steps: ``"float32"`` or
        ``"mixed_bfloat16"`` (bfloat16 compute, float32 weights, the objective and the
        optimiser in float32; about half the step time on CPUs with AMX-BF16, 0.6x on an
        H200). ``"float32"`` is full float32 on every device: on GPUs the JAX backend turns
        off TensorFloat-32 for it (``doc/benchmarks.md``, "GPU"). The final models are
        decoded in float32 either way.
    max_zoom : `int`
        Largest zoom chosen automatically for a source bigger than the stamp, in [1, 4]
        (3; 1 is off; ``doc/large-galaxies.md``: r mean abs(dF/F) 0.0183 -> 0.0142 on
        validation fields, mostly through the big galaxies' neighbours). A
        source goes from zoom ``z`` to ``z + 1`` when the VAE-deblender's guess drawn at
        ``z + 1`` puts more than ``zoom_outside_threshold`` of its flux outside the pixels a
        zoom-``z`` stamp covers, and its zoomed window would overlap no brighter source's window
        (that source's stamp, or its own zoomed window: a bright galaxy's light reaches beyond
        its peak's distance; ``doc/large-galaxies.md``). A ``zoom``
        passed to `MadnessDeblender.deblend` overrides the choice. With ``fit_offsets`` no zoom
        is chosen (every source stays at zoom 1): a zoomed window has no fitted offset (a
        source given a zoom > 1 holds its position).
    zoom_outside_threshold : `float`
        Fraction of the flux outside the smaller stamp above which the zoom is raised, in (0, 1)
        (``zoom_choice="guess"``). 0.03: the guess underestimates a big galaxy's outer light (the
        2.5" disc of ``tests/test_large_galaxies.py``, 16% of its light beyond the stamp, is
        guessed at 4.6% with the packaged decoder), and on the 20 and 60 validation fields 0.03
        zooms no more sources than 0.05 where 0.02 does (``doc/large-galaxies.md``).
    zoom_choice : `str`
        How ``max_zoom > 1`` chooses the zoom. ``"guess"``: from the VAE-deblender's guess at
        the next zoom, before the fit (above). ``"fit"``: every blend is first fitted at zoom 1;
        a source whose MAP model runs into its stamp edge (`DeblendResult.edge_flux_fraction`
        above ``zoom_edge_threshold``) and whose zoomed window would overlap no brighter
        source's window goes to the next zoom, and its blend is fitted again, up to
        ``max_zoom``. The guess on a binned cutout takes compact bright galaxies for big ones;
        the fitted model does not (``doc/large-galaxies.md``). Costs a second fit of the
        blends that hold such a source.
    zoom_edge_threshold : `float`
        Fraction of a fitted model's flux in its stamp's outer ring above which
        ``zoom_choice="fit"`` raises its zoom, in (0, 1).
    fit_envelopes : `bool`
        Fit the light of bright galaxies beyond their stamps (`lsst.meas.madness.engine.envelope`):
        after the fit, a source whose light goes on beyond its stamp (the mean residual of the
        8-px ring just outside it above ``envelope_edge_sigma`` times the pixel noise, in any
        band) and that has no
        source ``ENVELOPE_DOMINANCE`` times brighter within four stamp sides gets an envelope, a
        radial profile in its model's ellipse outside its stamp, and its blend is fitted again
        from its fitted latents with the envelopes profiled. The envelope belongs to its galaxy
        (`DeblendResult.envelopes`).
    envelope_edge_sigma : `float`
        Mean residual just outside a source's stamp, in units of the pixel noise, above which
        the source may get an envelope.
    envelope_harmonics : `int`
        Highest even azimuthal order of the envelopes' profiles (0: a radial profile in the
        model's ellipse, the default). Above 0 each radius also gets ``cos m phi`` and
        ``sin m phi`` values per band for every even ``m`` up to it, so that an envelope may be
        flatter, rounder or twisted against the whole model's ellipse (a bulge-dominated model
        is rounder than its disc's outskirts). Opt-in: on validation fields with a galaxy
        brighter than r = 19.5 order 4 lowered the r flux error of some fields and raised u and
        the e1 scatter in others (``doc/large-galaxies.md``, "Envelopes with azimuthal terms").
    psf_wings : `bool`
        With a PSF given (``deblend(..., psf=)``), give each source without an envelope its light
        beyond its footprint drawn from the PSF's far profile and its model's flux
        (`lsst.meas.madness.engine.wings`; ``DeblendResult.wing_fluxes``). No free parameter and
        no refit: the fit is unchanged, the sources' light is complete. On 20 validation fields
        the r mean abs(dF/F) 0.0240 -> 0.0229 and the median 0.0036 -> 0.0024
        (``doc/engine.md``, "PSF wings").
    outskirts : `bool`
        With ``psf_wings``, complete each such source's outskirts: the decoder draws nothing
        beyond about 14 px of a typical galaxy's centre (its ReLU output is zero where the light is far
        below the sky noise, which its training chi^2 weighs at almost nothing), where the truth still holds 2-3% of the flux. From
        12 px outwards, inside the footprint and beyond it, the source's light is the PSF's far
        profile plus the galaxy's own, an elliptical ``r^-7`` power law matched to the decoded
        model at 11 px (`lsst.meas.madness.engine.wings`; inside the footprint it only lifts
        pixels the decoder drew fainter, in `DeblendResult.models`). No free parameter and no
        refit. On 20 validation fields the r mean abs(dF/F) 0.0229 -> 0.0216 and the median
        0.0024 -> 0.0014; on 60 more 0.0222 -> 0.0210 and 0.0020 -> 0.0011, every band lower
        (``doc/engine.md``, "Outskirts").
    second_start_rate : `float` or `None`
        Adam learning rate of a second fit of every blend from the same starting point (None:
        one fit). Each group of sources whose footprints overlap keeps the models of the fit
        whose objective on their footprints is lower; blends that get envelopes keep their first
        fit. Off by default: on 20 validation fields r mean abs(dF/F) 0.0242 -> 0.0236, cosine
        0.9892 -> 0.9896, std e1 residual 0.093 -> 0.091, but y 0.052 -> 0.059 and the r median
        0.0034 -> 0.0039, for 1.6x the time; on 60 more validation fields r 0.0231 -> 0.0234,
        cosine 0.9899 -> 0.9904, std e1 0.102 -> 0.099, for 1.7x (``doc/training.md``, "What
        would close the rest").
    refit_beside_brighter : `float` or `None`
        Magnitude gap (band sum) above which a source is fitted again alone after the blend's
        fit (None: no refit). A source whose nearest source (peak distance) has a model more
        than this many magnitudes brighter, and that has no envelope, is fitted alone on the
        image minus every other source's model (their envelopes, outskirts and wings
        included), at its zoom, from the VAE-deblender's guess on that cleaned image, without an
        envelope of its own and with a stop floor (`REFIT_STOP_FLOOR` unless ``stop_floor`` is
        set); its refit replaces its model, and its blend is rebuilt with its envelopes as the
        fit left them (`DeblendResult.refit_alone`; `lsst.meas.madness.engine.refit`). In the
        joint fit a bright neighbour's model moves with the faint galaxy's and bends its shape;
        held fixed it cannot. All refits of one call are fitted in one batch. 1 since stop 61:
        on 60 validation fields every band's flux error level, r cosine 0.9930 -> 0.9945, std
        e1 residual 0.0811 -> 0.0766, for 1.5x the time of one field's fit; on the 100 test
        fields of seed 2026 std e1 0.082 -> 0.077 and 1.22x the time (``doc/engine.md``,
        "Refit beside a brighter neighbour"). 2 refits fewer sources for a smaller gain
        (std e1 0.0769, cosine 0.9937, 0.92x the time of 1).
    refit_start : `str`
        Where ``refit_beside_brighter``'s refits start: ``"guess"``, the VAE-deblender's guess
        on the cleaned image; ``"fit"``, the source's latents and flux factors from the blend's fit.
    refit_max_iter : `int` or `None`
        Most steps of a refit (None: ``max_iter``); its ``min_iter`` is then at most half of it.
    refit_learning_rate : `float` or `None`
        Adam's initial rate of the refits (None: ``learning_rate``); a refit started from the
        blend's fit (``refit_start="fit"``) is already near its optimum. With ``"fit"``, 40 and
        0.01: 0.88x the time of the defaults on 20 validation fields, every flux level and std
        e1 0.0766 -> 0.0758 but cosine 0.9945 -> 0.9935 on 60, and on the 100 test fields of
        seed 2026 std e1 0.0769 -> 0.0793 (``doc/engine.md``, "Shorter refits from the
        blend's fit"); not the default.
    init_log_prior_floor : `float` or `None`
        Lowest flow log-density of a starting point (-10,000): the VAE-deblender's latents of a
        source below it are moved towards the flow's mode until they reach it
        (`MadnessDeblender.pull_into_prior`; None: every start as the encoder gives it). The
        encoder puts 2.5% of the validation sources below -10,000 (down to -1.3e8), where the
        flow's own samples stay above -55 in 99.99%; there the prior term swamps the blend's
        objective and the stopping rule ends the blend before its galaxies are fitted. On 20
        validation fields the std of the r e1 residual 0.093 -> 0.088 (paired |e1| -0.0018,
        95% over fields -0.0042, -0.0003), every band's flux error unchanged within its noise, 15%
        more steps (scratch runs before this setting; the setting itself gives 0.090, the same in
        two runs, stop 52); floors of -300 and -100 touch 6% and 12% of the starts and cost r flux error
        (``doc/error-budget.md``, "Starts outside the prior"). The pipeline task uses it too
        (``initLogPriorFloor``, since 2026-12-05), where it lets the residual peaks' refits converge.
    optimizer : `str`
        ``"adam"`` (the paper's; ``learning_rate``, ``lr_decay`` and the ``adam_*`` fields) or
        ``"lbfgs"``: limited-memory BFGS per blend with a backtracking line search
        (`lsst.meas.madness.engine.lbfgs.BlendLbfgs`), each evaluation one step of the compiled
        batch, stopped by the same rule; its steepest-descent steps move no variable by more than
        ``learning_rate``. It reaches lower objectives in fewer steps (0.73x on 60 validation
        fields) but deblends worse: std e1 residual 0.0766 -> 0.0797, g-r scatter 0.155 -> 0.168,
        fluxes level (``doc/engine.md``, "L-BFGS instead of Adam"); opt-in.
    lbfgs_memory : `int`
        Curvature pairs L-BFGS keeps per blend (8).
    lbfgs_max_step : `float`
        Largest move of any variable in one L-BFGS step, in units of its step scale (1).
    lbfgs_diagonal : `bool`
        Scale L-BFGS's initial inverse Hessian per variable by its past gradients' root mean
        square (True) rather than by one scalar.
    lbfgs_after : `int`
        Adam steps before L-BFGS takes over (0: L-BFGS from the start).
    """

    learning_rate: float = 0.05
    lr_decay: float = 0.8
    lr_decay_steps: int = 30
    max_iter: int = 200
    min_iter: int = 40
    ewma_window: int = 15
    rtol: float = 0.01
    stop_atol: float | None = None
    stop_floor: float | None = None
    freeze_drift: float | None = None
    prior_weight: float = 0.1
    symmetry_weight: float = 3000.0
    max_sources: int = 100
    batch_sources: int = 256
    compact: bool = True
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-7
    fit_offsets: bool = False
    offset_max: float = 1.0
    offset_sigma: float = 0.5
    fit_amplitudes: bool = True
    amplitude_sigma: float = 0.5
    amplitude_step_scale: float = 1.0
    precision: str = "float32"
    max_zoom: int = 3
    zoom_outside_threshold: float = 0.03
    zoom_choice: str = "guess"
    zoom_edge_threshold: float = 0.02
    fit_envelopes: bool = True
    envelope_edge_sigma: float = 1.0
    envelope_harmonics: int = 0
    psf_wings: bool = True
    outskirts: bool = True
    second_start_rate: float | None = None
    init_log_prior_floor: float | None = -10000.0
    refit_beside_brighter: float | None = 1.0
    refit_start: str = "guess"
    refit_max_iter: int | None = None
    refit_learning_rate: float | None = None
    optimizer: str = "adam"
    lbfgs_memory: int = 8
    lbfgs_max_step: float = 1.0
    lbfgs_diagonal: bool = True
    lbfgs_after: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise MadnessValueError(f"MapSettings.precision must be one of {PRECISIONS}, not {self.precision!r}.")
        if self.refit_start not in REFIT_STARTS:
            raise MadnessValueError(
                f"MapSettings.refit_start must be one of {REFIT_STARTS}, not {self.refit_start!r}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise MadnessValueError(f"MapSettings.optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}.")
        if self.optimizer == "lbfgs" and self.freeze_drift is not None:
            raise MadnessValueError("MapSettings.freeze_drift follows Adam's steps; it does not apply to "
                                    "optimizer='lbfgs'.")
        if self.zoom_choice not in ZOOM_CHOICES:
            raise MadnessValueError(
                f"MapSettings.zoom_choice must be one of {ZOOM_CHOICES}, not {self.zoom_choice!r}."
            )
        checks = [
            ("learning_rate", self.learning_rate, 0.0, None, False),
            ("lr_decay", self.lr_decay, 0.0, 1.0, False),
            ("lr_decay_steps", self.lr_decay_steps, 1, None, True),
            ("max_iter", self.max_iter, 0, None, True),
            ("min_iter", self.min_iter, 0, None, True),
            ("ewma_window", self.ewma_window, 1, None, True),
            ("rtol", self.rtol, 0.0, None, True),
            ("prior_weight", self.prior_weight, 0.0, None, True),
            ("symmetry_weight", self.symmetry_weight, 0.0, None, True),
            ("max_sources", self.max_sources, 1, None, True),
            ("batch_sources", self.batch_sources, 1, None, True),
            ("adam_beta1", self.adam_beta1, 0.0, 1.0, True),
            ("adam_beta2", self.adam_beta2, 0.0, 1.0, True),
            ("adam_epsilon", self.adam_epsilon, 0.0, None, False),
            ("offset_max", self.offset_max, 0.0, 3.0, False),
            ("offset_sigma", self.offset_sigma, 0.0, None, False),
            ("amplitude_sigma", self.amplitude_sigma, 0.0, None, False),
            ("amplitude_step_scale", self.amplitude_step_scale, 0.0, None, False),
            ("max_zoom", self.max_zoom, 1, 4, True),
            ("zoom_outside_threshold", self.zoom_outside_threshold, 0.0, 1.0, False),
            ("zoom_edge_threshold", self.zoom_edge_threshold, 0.0, 1.0, False),
            ("envelope_edge_sigma", self.envelope_edge_sigma, 0.0, None, False),
            ("lbfgs_memory", self.lbfgs_memory, 1, None, True),
            ("lbfgs_max_step", self.lbfgs_max_step, 0.0, None, False),
            ("lbfgs_after", self.lbfgs_after, 0, None, True),
        ]
        if self.envelope_harmonics < 0 or self.envelope_harmonics % 2:
            raise MadnessRangeError("MapSettings.envelope_harmonics must be even and >= 0.",
                                    self.envelope_harmonics, 0, None)
        if self.second_start_rate is not None:
            checks.append(("second_start_rate", self.second_start_rate, 0.0, None, False))
        if self.refit_beside_brighter is not None:
            checks.append(("refit_beside_brighter", self.refit_beside_brighter, 0.0, None, True))
        if self.freeze_drift is not None:
            checks.append(("freeze_drift", self.freeze_drift, 0.0, None, False))
        if self.refit_max_iter is not None:
            checks.append(("refit_max_iter", self.refit_max_iter, 0, None, True))
        if self.refit_learning_rate is not None:
            checks.append(("refit_learning_rate", self.refit_learning_rate, 0.0, None, False))
        if self.stop_atol is not None:
            checks.append(("stop_atol", self.stop_atol, 0.0, None, False))
        if self.stop_floor is not None:
            checks.append(("stop_floor", self.stop_floor, 0.0, None, False))
        if self.init_log_prior_floor is not None and not math.isfinite(self.init_log_prior_floor):
            raise MadnessRangeError("MapSettings.init_log_prior_floor must be finite or None.",
                                    self.init_log_prior_floor, None, None)
        for name, value, lo, hi, inclusive_lo in checks:
            too_low = value < lo if inclusive_lo else value <= lo
            # NaN fails no comparison and infinity has no use in any of them: both are refused.
            if not math.isfinite(value) or too_low or (hi is not None and value > hi):
                raise MadnessRangeError(f"MapSettings.{name} out of range.", value, lo, hi)
        for name in ("zoom_outside_threshold", "zoom_edge_threshold"):  # fractions strictly inside (0, 1)
            if getattr(self, name) >= 1.0:
                raise MadnessRangeError(f"MapSettings.{name} out of range.", getattr(self, name), 0.0, 1.0)

    def replace(self, **changes) -> "MapSettings":
        """Return a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse_overrides(cls, items: Iterable[str]) -> dict:
        """Keyword arguments from ``KEY=VALUE`` strings, as a command line gives them.

        Parameters
        ----------
        items : iterable of `str`
            E.g. ``["max_iter=60", "second_start_rate=0.02", "fit_envelopes=false"]``. Values
            take the field's type: booleans from ``true``/``false`` (or ``1``/``0``, ``yes``/``no``),
            ``none`` for an optional field.

        Returns
        -------
        overrides : `dict`
            ``{field: typed value}``, validated as a whole by building the settings.

        Raises
        ------
        MadnessValueError
            An item without ``=``, a key given twice, a name that is not a field, or a value
            that does not parse as the field's type or lies outside its range.
        """
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        out: dict = {}
        for item in items:
            key, sep, text = str(item).partition("=")
            key, text = key.strip(), text.strip()
            if not sep or not key:
                raise MadnessValueError(f"A MapSettings override is KEY=VALUE, not {item!r}.")
            if key not in types:
                raise MadnessValueError(f"MapSettings has no field {key!r}; the fields are {', '.join(types)}.")
            if key in out:
                raise MadnessValueError(f"MapSettings.{key} is given twice.")
            out[key] = _parse_value(key, types[key], text)
        cls(**out)  # range and choice checks, with the fields' own messages
        return out


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _parse_value(key: str, kind: str, text: str):
    """``text`` as a value of the MapSettings field ``key`` whose annotation is ``kind``."""
    optional = kind.replace(" ", "").endswith("|None")
    base = kind.split("|")[0].strip()
    if optional and text.lower() == "none":
        return None
    try:
        if base == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        return text
    except ValueError:
        raise MadnessValueError(f"MapSettings.{key} takes a value of type {kind}, not {text!r}.") from None
