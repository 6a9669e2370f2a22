"""The MLP backbone's generator head: without the LayerNorm before its output (the default) a
generator's samples are not confined to a closed curve; weights saved with the other head fail to
load with a one-line error naming the setting."""
import pytest
import torch

from onestep.interfaces import DataSpec, NetworkRequest
from onestep_mlp.network import MLP, MLPConfig


def generator(out_norm: bool) -> MLP:
    torch.manual_seed(0)
    return MLP(MLPConfig(width=64, depth=2, generator_out_norm=out_norm), NetworkRequest("generator"), DataSpec(shape=(2,)))


def test_generator_output_keeps_the_size_of_its_input_without_the_output_norm():
    """With the norm, the head sees a normalised hidden state: far out along a direction the
    output stops moving (a 2-D generator draws a ring); without it the output keeps growing."""
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        spread = {norm: float((generator(norm)(8 * z) - generator(norm)(4 * z)).norm(dim=1).mean()) for norm in (True, False)}
    assert spread[False] > 3 * spread[True], spread


def test_weights_of_the_other_head_are_a_one_line_error_naming_the_setting():
    with pytest.raises(ValueError, match=r"^backbone mlp: these weights were trained with backbone.generator_out_norm=true") as err:
        generator(False).load_state_dict(generator(True).state_dict())
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="generator_out_norm=false"):
        generator(True).load_state_dict(generator(False).state_dict())
    critic = MLP(MLPConfig(width=64, depth=2), NetworkRequest("critic"), DataSpec(shape=(2,)))
    critic.load_state_dict(critic.state_dict())  # critic and classifier heads keep their norm
