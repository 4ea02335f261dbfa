"""The backbone registry and build_backbone: names, options, validation, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backbones import MULTI_INTEREST, REGISTRY, backbone_options, build_backbone
from backbones.base import BackboneConfig
from harness.errors import ConfigError
from harness.registry import expand_names

NAMES = sorted(REGISTRY)


def build(name: str = "comirec-sa", **kwargs: object) -> torch.nn.Module:
    arguments: dict[str, object] = {"n_items": 20, "dim": 8, "num_interests": 2, "max_len": 5}
    arguments.update(kwargs)
    return build_backbone(name, **arguments)


def test_registered_names() -> None:
    assert set(REGISTRY) == {"comirec-sa", "comirec-dr", "mind", "remi", "sasrec"}
    assert MULTI_INTEREST == ("comirec-sa", "comirec-dr", "mind", "remi")
    assert expand_names("all,sasrec", REGISTRY, MULTI_INTEREST, "backbone") == (
        *MULTI_INTEREST,
        "sasrec",
    )


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_config_class_is_frozen_backbone_config(name: str) -> None:
    config_class = REGISTRY[name].config_class
    assert issubclass(config_class, BackboneConfig)
    config = build(name).config
    with pytest.raises(AttributeError):
        config.dim = 4  # type: ignore[misc]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as error:
        build("comirec")
    message = str(error.value)
    assert "'comirec'" in message
    for name in NAMES:
        assert name in message


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("dim", 0, "dim=0"),
        ("max_len", 0, "max_len=0"),
        ("n_items", 0, "n_items=0"),
        ("dim", 8.0, "must be an integer"),
    ],
    ids=["dim-zero", "max-len-zero", "no-items", "float-dim"],
)
def test_invalid_sizes_rejected(name: str, field: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build(name, **{field: value})


@pytest.mark.parametrize("name", MULTI_INTEREST, ids=list(MULTI_INTEREST))
def test_zero_interests_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="K must be >= 1"):
        build(name, num_interests=0)


def test_numpy_sizes_accepted() -> None:
    model = build("comirec-dr", n_items=np.int64(20), dim=np.int32(8), seed=np.int64(3))
    assert type(model.config.n_items) is int
    assert type(model.config.dim) is int
    assert model.item_embedding.weight.shape == (21, 8)


def test_sasrec_ignores_num_interests() -> None:
    model = build("sasrec", num_interests=4)
    assert model.num_interests == 1
    assert model.config.num_interests == 1


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ConfigError) as error:
        build("mind", options={"routing_iteration": 2})
    message = str(error.value)
    assert "'routing_iteration'" in message
    for option in backbone_options("mind"):
        assert option in message


def test_shared_size_as_option_rejected() -> None:
    with pytest.raises(ConfigError, match="pass it as the dim argument"):
        build("mind", options={"dim": 16})


def test_backbone_options_lists_defaults() -> None:
    assert backbone_options("comirec-dr") == {
        "routing_iterations": 3,
        "routing_axis": "interests",
        "stop_gradient": True,
        "position_maps": False,
    }
    assert backbone_options("remi")["reg_lambda"] == 100.0
    with pytest.raises(ConfigError, match="valid choices"):
        backbone_options("nope")


def test_text_options_converted() -> None:
    model = build(
        "mind",
        options={
            "relu_layer": "false",
            "routing_iterations": "2",
            "routing_axis": "positions",
            "logit_std": "0.5",
        },
    )
    assert model.config.relu_layer is False
    assert model.config.routing_iterations == 2
    assert model.config.routing_axis == "positions"
    assert model.config.logit_std == 0.5
    assert build("comirec-sa", options={"hidden": "none"}).config.hidden is None
    assert build("comirec-sa", options={"hidden": 12}).config.hidden_size == 12
    assert build("comirec-sa").config.hidden_size == 32


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("mind", {"routing_axis": "sideways"}, "expected one of 'interests', 'positions'"),
        ("mind", {"relu_layer": "maybe"}, "expected true or false"),
        ("mind", {"routing_iterations": "three"}, "expected an integer"),
        ("mind", {"routing_iterations": True}, "not a boolean"),
        ("mind", {"routing_iterations": 0}, "routing_iterations=0"),
        ("mind", {"logit_std": "wide"}, "expected a number"),
        ("comirec-sa", {"hidden": 0}, "hidden=0"),
        ("remi", {"reg_lambda": -2}, "reg_lambda=-2.0"),
        ("sasrec", {"num_heads": 3}, "must divide dim=8"),
        ("sasrec", {"dropout": 1.0}, r"must be in \[0, 1\)"),
        ("sasrec", {"num_blocks": 0}, "num_blocks=0"),
    ],
    ids=[
        "bad-axis",
        "bad-bool",
        "bad-int",
        "bool-as-int",
        "zero-iterations",
        "bad-float",
        "zero-hidden",
        "negative-lambda",
        "heads-not-dividing-dim",
        "dropout-one",
        "zero-blocks",
    ],
)
def test_invalid_option_values_rejected(
    name: str, options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build(name, options=options)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_build_leaves_global_rng_alone(name: str) -> None:
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    build(name, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_build_does_not_depend_on_global_rng(name: str) -> None:
    torch.manual_seed(1)
    first = build(name, seed=7).state_dict()
    torch.manual_seed(2)
    second = build(name, seed=7).state_dict()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_padding_row_starts_at_zero(name: str) -> None:
    model = build(name)
    assert (model.item_embedding.weight[0] == 0).all()
    assert model.item_embedding.weight[1:].abs().sum() > 0
