"""Named training budgets for studies: ``--preset quick`` and ``--preset paper``.

A preset fills the training settings a user did not give on the command
line; every explicit flag wins over it. It also sets how many seeds and
tuning trials a study runs when ``--seeds`` and ``--trials`` are omitted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.config import TrainConfig
from harness.errors import ConfigError, unknown_choice

_DEFAULT_TRAIN = TrainConfig()


@dataclass(frozen=True)
class Preset:
    """A training budget and the default study size that goes with it.

    Attributes:
        name: Name given to ``--preset``.
        description: Summary for the help text.
        max_steps: Maximum training steps per run.
        eval_every: Validate every this many steps.
        patience: Stop after this many validations without improvement.
        num_negatives: Shared negatives per step of the sampled softmax.
        valid_users: Size of the fixed validation subsample (``None``: all users).
        seeds: Number of seeds (0, 1, ...) when ``--seeds`` is omitted.
        trials: Tuning trials per component when ``--trials`` is omitted.
    """

    name: str
    description: str
    max_steps: int
    eval_every: int
    patience: int
    num_negatives: int
    valid_users: int | None
    seeds: int
    trials: int

    def __post_init__(self) -> None:
        for name in ("max_steps", "eval_every", "patience", "num_negatives", "seeds", "trials"):
            if getattr(self, name) < 1:
                raise ConfigError(f"invalid preset {self.name!r}: {name} must be >= 1")
        if self.valid_users is not None and self.valid_users < 1:
            raise ConfigError(f"invalid preset {self.name!r}: valid_users must be >= 1 or None")

    @property
    def train_values(self) -> dict[str, int | None]:
        """The TrainConfig fields this preset sets, by field name."""
        return {name: getattr(self, name) for name in TRAIN_FIELDS}

    def apply(self, train: TrainConfig, explicit: frozenset[str] = frozenset()) -> TrainConfig:
        """Return ``train`` with the preset's budget, except for the fields named in ``explicit``.

        Args:
            train: The training config built from the command line.
            explicit: TrainConfig field names the user set on the command line;
                they keep the value in ``train``.
        """
        values = {name: value for name, value in self.train_values.items() if name not in explicit}
        return dataclasses.replace(train, **values)


# TrainConfig fields a preset owns, in the order of the Preset dataclass.
TRAIN_FIELDS = ("max_steps", "eval_every", "patience", "num_negatives", "valid_users")

# Measured with `harness study --backbones all --strategies all --preset quick`,
# which makes 32 runs (4 backbones x 4 strategies x 2 seeds) on the embedded
# synthetic data, on a 2-core VM that other processes kept busy (load average
# about 3). It took 1 min 16 s with --jobs 2 (one torch thread per run). With
# the default single job it took 5 min 14 s, because its two threads per run
# suffered most from the other load.
# Both gave the same numbers. At this budget BaM-style sampling already beats
# argmax on ComiRec-SA, MIND and REMI.
QUICK = Preset(
    name="quick",
    description="a smoke test of 500 steps, 256 negatives, 500 validation users, 2 seeds",
    max_steps=500,
    eval_every=100,
    patience=2,
    num_negatives=256,
    valid_users=500,
    seeds=2,
    trials=8,
)

# The full protocol. Adam at lr 1e-3, batch 128, D = 64, K = 4, L = 50 and
# 1,280 uniform negatives are already the config defaults, so the preset
# only fixes the step budget and the early stopping.
PAPER = Preset(
    name="paper",
    description="the full protocol of 20,000 steps, validation every 500, patience 5, 1,280 negatives, 5 seeds",
    max_steps=_DEFAULT_TRAIN.max_steps,
    eval_every=_DEFAULT_TRAIN.eval_every,
    patience=_DEFAULT_TRAIN.patience,
    num_negatives=_DEFAULT_TRAIN.num_negatives,
    valid_users=_DEFAULT_TRAIN.valid_users,
    seeds=5,
    trials=50,
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (QUICK, PAPER)}

# Seeds and trials of a study run without a preset.
DEFAULT_SEEDS = 3
DEFAULT_TRIALS = 20


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``.

    Raises:
        ConfigError: If there is no such preset; the message lists the valid names.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise unknown_choice("preset", name, PRESETS) from None
