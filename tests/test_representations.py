import numpy as np
import torch
import torch.nn.functional as F

from vlmlib.representations import consecutive_layer_similarity


@torch.no_grad()
def independent_avg_sim(lm, samples):
    """AvgSim from transformers' output_hidden_states, one sample at a time, no vlmlib hooks.

    output_hidden_states[-1] is after the final norm, so the last layer's raw output comes from a
    plain forward hook on that layer.
    """
    last_layer = lm.model.get_submodule(lm.family.decoder_layers)[-1]
    rows = {"vision": [], "text": []}
    for sample in samples:
        inputs = lm.encode_samples([sample])
        captured = []
        handle = last_layer.register_forward_hook(lambda m, a, out: captured.append(out))
        try:
            hidden = list(lm.forward(inputs, output_hidden_states=True).hidden_states)
        finally:
            handle.remove()
        hidden[-1] = captured[0]
        ids = inputs["input_ids"][0]
        vision = ids == lm.image_token_id
        for modality, mask in (("vision", vision), ("text", ~vision)):
            rows[modality].append([F.cosine_similarity(hidden[l][0, mask], hidden[l + 1][0, mask], dim=-1).mean().item()
                                   for l in range(len(hidden) - 1)])
    return {m: np.array(v) for m, v in rows.items()}


def test_chapter1_numbers_equal_an_independent_computation(lm, samples):
    ours = consecutive_layer_similarity(lm, samples, batch_size=4)
    reference = independent_avg_sim(lm, samples)
    for modality in ("vision", "text"):
        assert ours[modality].shape == (len(samples), lm.num_layers)
        np.testing.assert_allclose(ours[modality], reference[modality], rtol=1e-5, atol=1e-6)
