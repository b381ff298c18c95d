"""Zeroth-order personalization of quantized diffusion pipelines (ZOODiP, diffusion_methods.md sections 6-7).

``visq.personalize(pipe, images, token)`` learns a new token's embedding by textual inversion with forward
passes only; modules: ``zo`` (the seeded estimator), ``subspace`` (Subspace Gradient), ``timesteps`` (PUTS),
``textual_inversion`` (the training task, ZO or backprop), ``api`` (the verb, embedding files).
"""

from visq.personalize.api import EMBEDDING_FILE, PersonalizeResult, personalize, save_embedding
from visq.personalize.textual_inversion import PersonalizeSettings, TextualInversionTask

__all__ = ["EMBEDDING_FILE", "PersonalizeResult", "PersonalizeSettings", "TextualInversionTask", "personalize",
           "save_embedding"]
