"""The VAE training script: stage 2 fine-tunes the decoder only, so the latent space the denoisers use is unchanged."""

import torch

from pipelines import train_vae
from visq.zoo.builders import build_vae


def _state(tmp_path):
    return torch.load(tmp_path / "vae" / "ckpt.pt", weights_only=False)


def _config(tmp_path, decoder_steps: int) -> train_vae.Config:
    return train_vae.Config(steps=2, decoder_steps=decoder_steps, batch=4, eval_size=8, run_dir=str(tmp_path),
                            out_dir=str(tmp_path / f"out{decoder_steps}"))


def test_decoder_stage_keeps_the_encoder_and_resumes(tmp_path):
    train_vae.main(_config(tmp_path, decoder_steps=0))
    before = _state(tmp_path)["model"]
    train_vae.main(_config(tmp_path, decoder_steps=2))  # resumes at step 2 and runs the decoder stage
    after = _state(tmp_path)
    assert after["step"] == 4 and after["stage"] == 2
    vae = build_vae()
    encoder = [k for k in vae.state_dict() if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in vae.state_dict() if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder
    assert all(torch.equal(before[k], after["model"][k]) for k in encoder)
    assert any(not torch.equal(before[k], after["model"][k]) for k in decoder)
