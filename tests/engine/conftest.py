import pytest

from deployments.decoder import Decoder
from deployments.denoiser import Denoiser
from deployments.encoder import Encoder


class Stages:
    """The three stage classes of one checkpoint, in this process."""

    def __init__(self, model: str):
        self.model = model
        self.encoder, self.denoiser, self.decoder = Encoder(model), Denoiser(model), Decoder(model)


@pytest.fixture(scope="session")
def stages(tiny_checkpoints) -> dict[str, Stages]:
    return {variant: Stages(path) for variant, path in tiny_checkpoints.items()}
