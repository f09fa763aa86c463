"""The latent DiT, its objective and the sampling loop, on tiny random models."""

import pytest
import torch
from diffusers.training_utils import EMAModel

from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.objective import DiffusionObjectiveConfig, diffusion_loss
from latentdlm.diffusion.sampling import RowGuidance, make_guider, sample_latents, with_null_half
from latentdlm.diffusion.schedulers import SCHEDULERS, make_scheduler, training_scheduler, x0_and_noise
from latentdlm.errors import LatentDLMError

K, D, S = 4, 8, 3


def tiny_dit(**extra) -> LatentDiT:
    torch.manual_seed(0)
    settings = dict(latent_dim=D, num_latents=K, max_segments=S, hidden_size=32, num_layers=2, num_heads=2)
    return LatentDiT(**{**settings, **extra})


def randomize_output(model: LatentDiT) -> LatentDiT:
    """The output layer starts at zero; give it weights so predictions depend on the inputs."""
    torch.nn.init.normal_(model.proj_out.weight, std=0.2)
    return model


def inputs(batch=2, segments=S):
    torch.manual_seed(1)
    return torch.randn(batch, segments * K, D), torch.tensor([10, 700][:batch])


def guide(cond, null, scale, rescale, mask, method="cfg"):
    """One step of the sampler's guidance: the guider on each row's real latents."""
    return RowGuidance(make_guider(method, scale, rescale), mask)(cond, null, 0, 1, torch.tensor(999))


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_output_shape_and_zero_initialised_output(patch_size):
    model = tiny_dit(patch_size=patch_size)
    x, t = inputs()
    out = model(x, t, self_condition=torch.randn_like(x))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0
    assert model.latent_position.shape[0] * patch_size == K  # one token per patch of a segment


def test_a_patch_is_one_token_so_its_latents_only_meet_other_patches_through_attention():
    """With self-attention silenced, each token (a patch of 2 latents) sees only its own latents."""
    model = randomize_output(tiny_dit(patch_size=2, num_layers=1))
    for block in model.blocks:
        torch.nn.init.zeros_(block.attn1.to_out[0].weight)
        torch.nn.init.zeros_(block.attn1.to_out[0].bias)
    x, t = inputs()
    changed = x.clone()
    changed[:, 0] += 5.0  # the first latent: the first patch holds latents 0 and 1
    diff = (model(x, t) - model(changed, t)).abs().sum(dim=(0, 2))
    assert diff[:2].gt(0).all() and diff[2:].eq(0).all()


def test_a_patch_size_that_does_not_divide_the_latents_is_a_clear_error():
    with pytest.raises(LatentDLMError, match="patch_size 3 does not divide the 4 latents"):
        tiny_dit(patch_size=3)


def test_save_load_round_trip_is_exact(tmp_path):
    model = randomize_output(tiny_dit(class_names=["a", "b"], condition_dim=6, patch_size=2))
    model.set_segment_statistics(torch.tensor([1, 2, 2, 3]))
    model.save_pretrained(tmp_path)
    loaded = LatentDiT.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.config.class_names == ["a", "b"] and loaded.config.patch_size == 2
    assert torch.allclose(loaded.segment_count_freq, torch.tensor([[0.25, 0.5, 0.25]] * 3))  # no labels: every row alike
    x, t = inputs()
    labels = torch.tensor([0, 2])
    assert torch.equal(model(x, t, class_labels=labels), loaded(x, t, class_labels=labels))


def test_latent_space_statistics_normalise_the_training_latents():
    from latentdlm.autoencoder.designs import LatentSpace

    space = LatentSpace(D)
    units = torch.randn(400, K, D) * torch.linspace(0.5, 4, D) + torch.arange(D)
    assert torch.equal(space.normalize(units), units)  # identity until fitted
    space.fit(units)
    normed = space.normalize(units).reshape(-1, D)
    assert torch.allclose(normed.mean(0), torch.zeros(D), atol=1e-4)
    assert torch.allclose(normed.std(0), torch.ones(D), atol=1e-3)
    assert torch.allclose(space.denormalize(space.normalize(units)), units, atol=1e-4)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_padded_segments_do_not_change_the_real_ones(patch_size):
    model = randomize_output(tiny_dit(patch_size=patch_size))
    x, t = inputs(segments=S)
    mask = torch.zeros(2, S * K, dtype=torch.bool)
    mask[:, : 2 * K] = True  # two real segments, one padded
    noisy_pad = x.clone()
    noisy_pad[:, 2 * K :] = torch.randn(2, K, D) * 10
    a = model(x, t, latent_mask=mask)[:, : 2 * K]
    b = model(noisy_pad, t, latent_mask=mask)[:, : 2 * K]
    assert torch.allclose(a, b, atol=1e-5)


def test_condition_padding_changes_nothing():
    model = randomize_output(tiny_dit(condition_dim=6))
    x, t = inputs()
    states = torch.randn(2, 3, 6)
    padded = torch.cat([states, torch.randn(2, 4, 6) * 5], dim=1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]] * 2, dtype=torch.bool)
    plain = model(x, t, condition_states=states, condition_mask=torch.ones(2, 3, dtype=torch.bool))
    assert torch.allclose(plain, model(x, t, condition_states=padded, condition_mask=mask), atol=1e-5)


@pytest.mark.parametrize("source_latents", [None, 3])
def test_the_source_read_once_predicts_what_reading_it_every_pass_does(source_latents):
    model = randomize_output(tiny_dit(condition_dim=6, source_latents=source_latents))
    x, t = inputs()
    conditions = {"condition_states": torch.randn(2, 7, 6), "condition_mask": torch.tensor([[1] * 7, [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)}
    prepared = model.prepare_conditions(conditions)
    assert set(prepared) == {"condition_context", "condition_mask"}
    # every layer's keys and values: (layers, 2, batch, heads, source length, head dim)
    assert prepared["condition_context"].shape == (len(model.blocks), 2, 2, 2, source_latents or 7, 16)
    torch.testing.assert_close(model(x, t, **prepared), model(x, t, **conditions))
    assert not torch.allclose(model(x, t, **prepared), model(x, t))  # and it is read
    assert model.prepare_conditions({"class_labels": torch.tensor([0])}) == {"class_labels": torch.tensor([0])}


def test_the_keys_and_values_read_once_give_what_diffusers_cross_attention_gives():
    from diffusers.models.attention_processor import AttnProcessor2_0

    model = randomize_output(tiny_dit(condition_dim=6))
    x, t = inputs()
    conditions = {"condition_states": torch.randn(2, 5, 6), "condition_mask": torch.tensor([[1, 1, 1, 0, 0], [1] * 5], dtype=torch.bool)}
    ours = model(x, t, **conditions)
    for block in model.blocks:
        block.attn2.set_processor(AttnProcessor2_0())  # diffusers' own: each layer's keys and values from the states
    model._source_context = lambda states, mask: (model.condition_proj(states), mask.bool())  # the states reach diffusers'
    torch.testing.assert_close(ours, model(x, t, **conditions))


def test_a_resampled_source_costs_each_pass_the_same_whatever_its_length():
    model = randomize_output(tiny_dit(condition_dim=6, source_latents=3))
    short, long = ({"condition_states": torch.randn(2, n, 6), "condition_mask": torch.ones(2, n, dtype=torch.bool)} for n in (4, 200))
    assert model.prepare_conditions(short)["condition_context"].shape == model.prepare_conditions(long)["condition_context"].shape
    loss = diffusion_loss(model, training_scheduler("epsilon"), {"latents": torch.randn(2, S * K, D), "latent_mask": torch.ones(2, S * K, dtype=torch.bool),
                                                        **long}, DiffusionObjectiveConfig(condition_dropout=0.5))["loss"]
    loss.backward()
    assert model.source_resampler.latent_queries.grad.abs().sum() > 0  # the resampler trains with the DiT


@pytest.mark.parametrize("condition", [{"condition_dim": 6}, {"class_names": ["a", "b"]}])
def test_a_conditional_dit_started_from_an_unconditional_one_first_predicts_what_it_does(condition):
    story = randomize_output(tiny_dit())
    torch.nn.init.normal_(story.proj_in.weight, std=0.5)
    titled = tiny_dit(**condition)
    new = titled.start_from(story)
    assert new and all(n.split(".")[0] in ("condition_proj", "null_condition", "length_head", "blocks", "class_embedding") for n in new)
    assert all(".attn2." in n for n in new if n.startswith("blocks."))  # every shared weight came over
    x, t = inputs()
    given = {"condition_states": torch.randn(2, 5, 6)} if "condition_dim" in condition else {"class_labels": torch.tensor([0, 1])}
    torch.testing.assert_close(titled(x, t, **given), story(x, t))  # whatever the condition, at step 0
    with pytest.raises(LatentDLMError, match="shapes differ"):
        tiny_dit(hidden_size=64).start_from(story)
    with pytest.raises(LatentDLMError, match="it has weights this one lacks"):
        tiny_dit().start_from(titled)


@pytest.mark.parametrize("kind", ["class", "text"])
def test_guidance_scale_one_is_the_conditional_prediction_and_zero_the_null_one(kind):
    model = randomize_output(tiny_dit(class_names=["a", "b", "c"]) if kind == "class" else tiny_dit(condition_dim=6))
    x, t = inputs()
    mask = torch.ones(2, S * K, dtype=torch.bool)
    if kind == "class":
        conditions = {"class_labels": torch.tensor([0, 2])}
        null = {"class_labels": torch.tensor([3, 3])}
    else:
        conditions = {"condition_states": torch.randn(2, 5, 6), "condition_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]], dtype=torch.bool)}
        null = {}
    conditional = model(x, t, mask, **conditions)
    unconditional = model(x, t, mask, **null)
    cond, uncond = model(x.repeat(2, 1, 1), t.repeat(2), mask.repeat(2, 1), **with_null_half(model, conditions, 2)).chunk(2)
    assert torch.allclose(cond, conditional, atol=1e-5) and torch.allclose(uncond, unconditional, atol=1e-5)
    assert make_guider("cfg", 1.0) is None  # scale 1: the conditional prediction alone, no null branch
    assert torch.allclose(guide(cond, uncond, 0.0, 0.0, mask), unconditional, atol=1e-5)
    expected = unconditional + 3.0 * (conditional - unconditional)
    assert torch.allclose(guide(cond, uncond, 3.0, 0.0, mask), expected, atol=1e-4)


def test_guidance_rescale_ignores_padded_segments():
    torch.manual_seed(0)
    cond, null = torch.randn(2, 3 * K, D), torch.randn(2, 3 * K, D)
    mask = torch.zeros(2, 3 * K, dtype=torch.bool)
    mask[:, : 2 * K] = True  # the third segment is padding
    wild_cond, wild_null = cond.clone(), null.clone()
    wild_cond[:, 2 * K :], wild_null[:, 2 * K :] = 100.0, -100.0
    plain = guide(cond, null, 3.0, 0.7, mask)[:, : 2 * K]
    assert torch.allclose(guide(wild_cond, wild_null, 3.0, 0.7, mask)[:, : 2 * K], plain, atol=1e-5)
    # fully rescaled, the real latents of the guided output have the conditional prediction's std
    full = guide(cond, null, 3.0, 1.0, mask)[:, : 2 * K]
    assert torch.allclose(full.reshape(2, -1).std(dim=1), cond[:, : 2 * K].reshape(2, -1).std(dim=1), atol=1e-4)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_each_scheduler_and_prediction_type_samples_finite_latents(sampler, prediction):
    model = randomize_output(tiny_dit(class_names=["a", "b"]))
    scheduler = make_scheduler(sampler, training_scheduler(prediction))
    mask = torch.ones(3, 2 * K, dtype=torch.bool)
    latents = sample_latents(model, scheduler, mask, 5, torch.Generator().manual_seed(0),
                             {"class_labels": torch.tensor([0, 1, 0])}, make_guider("cfg", 2.0, 0.5))
    assert latents.shape == (3, 2 * K, D)
    assert torch.isfinite(latents).all()
    again = sample_latents(model, make_scheduler(sampler, training_scheduler(prediction)), mask, 5,
                           torch.Generator().manual_seed(0), {"class_labels": torch.tensor([0, 1, 0])}, make_guider("cfg", 2.0, 0.5))
    assert torch.equal(latents, again)


def test_unknown_scheduler_or_prediction_type_is_a_clear_error():
    with pytest.raises(LatentDLMError, match="unknown scheduler 'euler'"):
        make_scheduler("euler", training_scheduler("epsilon"))
    with pytest.raises(LatentDLMError, match="unknown prediction type 'x0'"):
        training_scheduler("x0")


class Recorder(torch.nn.Module):
    """Wraps a denoiser and records the self-condition input of each call."""

    def __init__(self, model):
        super().__init__()
        self.module = model
        self.self_conditions, self.outputs, self.inputs = [], [], []

    def forward(self, sample, *args, self_condition=None, **kwargs):
        out = self.module(sample, *args, self_condition=self_condition, **kwargs)
        self.inputs.append(sample)
        self.self_conditions.append(self_condition)
        self.outputs.append(out.detach())
        return out


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_self_conditioning_feeds_the_first_pass_x0_estimate(prob):
    model = randomize_output(tiny_dit())
    recorder = Recorder(model)
    scheduler = training_scheduler("v_prediction")
    latents, _ = inputs()
    batch = {"latents": latents, "latent_mask": torch.ones(2, S * K, dtype=torch.bool)}
    generator = torch.Generator().manual_seed(0)
    diffusion_loss(recorder, scheduler, batch, DiffusionObjectiveConfig(self_conditioning_prob=prob), generator)
    assert len(recorder.self_conditions) == 2 and recorder.self_conditions[0] is None
    # replay the same random draws to recover the noisy input and timesteps of that call
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (2,), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    expected = x0_and_noise(scheduler, recorder.outputs[0], noisy, timesteps)[0] * prob
    assert torch.allclose(recorder.self_conditions[1], expected, atol=1e-6)
    assert (recorder.self_conditions[1].abs().sum() > 0) == (prob == 1.0)


def test_condition_dropout_reaches_the_null_condition():
    model = tiny_dit(class_names=["a", "b"], condition_dim=6)
    batch = {
        "latents": torch.randn(4, K, D), "latent_mask": torch.ones(4, K, dtype=torch.bool),
        "class_labels": torch.tensor([0, 1, 0, 1]), "condition_states": torch.randn(4, 3, 6),
        "condition_mask": torch.ones(4, 3, dtype=torch.bool),
    }
    randomize_output(model)
    loss = diffusion_loss(model, training_scheduler("epsilon"), batch, DiffusionObjectiveConfig(condition_dropout=1.0))["loss"]
    loss.backward()
    assert model.null_condition.grad.abs().sum() > 0
    assert model.class_embedding.weight.grad[2].abs().sum() > 0  # the null class row
    assert model.class_embedding.weight.grad[:2].abs().sum() == 0


def test_a_tiny_dit_overfits_a_handful_of_latents():
    torch.manual_seed(0)
    model = tiny_dit(self_conditioning=False)
    scheduler = training_scheduler("epsilon")
    # four latent sequences, each repeated 16 times per batch for steadier gradients
    data = {"latents": torch.randn(4, 2 * K, D).repeat(16, 1, 1), "latent_mask": torch.ones(64, 2 * K, dtype=torch.bool)}
    cfg = DiffusionObjectiveConfig()

    def held_out_loss():
        with torch.no_grad():
            return sum(diffusion_loss(model, scheduler, data, cfg, torch.Generator().manual_seed(s))["loss"] for s in range(20)) / 20

    before = held_out_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = diffusion_loss(model, scheduler, data, cfg)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < before / 5, (before, after)  # seen: 1.00 -> 0.11


def test_ema_save_and_load_round_trip(tmp_path):
    model = randomize_output(tiny_dit())
    ema = EMAModel(model.parameters(), decay=0.9, model_cls=LatentDiT, model_config=model.config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.step(model.parameters())
    ema.step(model.parameters())
    ema.save_pretrained(tmp_path / "ema")
    loaded = EMAModel.from_pretrained(tmp_path / "ema", model_cls=LatentDiT)
    assert loaded.optimization_step == ema.optimization_step
    for a, b in zip(ema.shadow_params, loaded.shadow_params):
        assert torch.equal(a, b)
    state = ema.state_dict()
    fresh = EMAModel(tiny_dit().parameters(), decay=0.5)
    fresh.load_state_dict(state)
    assert fresh.decay == 0.9 and all(torch.equal(a, b) for a, b in zip(ema.shadow_params, fresh.shadow_params))


def test_class_labels_by_name_or_index_and_clear_errors():
    model = tiny_dit(class_names=["World", "Sports"])
    assert model.class_index("Sports") == 1 and model.class_index(0) == 0 and model.class_index("1") == 1
    with pytest.raises(LatentDLMError, match="unknown class label 'Cooking'"):
        model.class_index("Cooking")
    with pytest.raises(LatentDLMError, match="out of range"):
        model.class_index(5)
    with pytest.raises(LatentDLMError, match="without class labels"):
        tiny_dit().class_index("World")


# ---- samplers: timestep spacing and an oracle denoiser -------------------------------------------
STEP_COUNTS = [10, 20, 50, 250]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_every_sampler_starts_at_the_last_training_timestep(sampler, prediction):
    base = training_scheduler(prediction)
    first = base.config.num_train_timesteps - 1
    if sampler == "dpm" and prediction == "epsilon":
        # the documented cosine clip for epsilon models: the first timestep with lambda >= -5.1
        alpha_bar = base.alphas_cumprod
        lam = 0.5 * torch.log(alpha_bar / (1 - alpha_bar))
        first = int((lam >= -5.1).nonzero().max())
    for steps in STEP_COUNTS:
        scheduler = make_scheduler(sampler, base)
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.tolist()
        assert timesteps[0] == first, (sampler, steps, timesteps[:3])
        assert len(timesteps) == steps and timesteps == sorted(timesteps, reverse=True)
        assert timesteps[-1] <= base.config.num_train_timesteps / steps  # the last step ends near clean data


class Oracle(torch.nn.Module):
    """A perfect denoiser for one fixed target: returns the true epsilon / v / x0 of its input."""

    def __init__(self, target: torch.Tensor, scheduler):
        super().__init__()
        self.target, self.alpha_bar = target, scheduler.alphas_cumprod
        self.kind = scheduler.config.prediction_type
        self.config = type("Config", (), {"latent_dim": target.shape[-1], "self_conditioning": False})()
        self.device = torch.device("cpu")

    def forward(self, sample, timesteps, latent_mask=None, self_condition=None, **_):
        alpha_bar = self.alpha_bar[timesteps.long()].reshape(-1, 1, 1).double()
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0 = self.target.double()
        eps = (sample.double() - a * x0) / s
        out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[self.kind]
        return out.to(sample.dtype)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_an_oracle_denoiser_drives_every_sampler_to_its_target(sampler, prediction):
    torch.manual_seed(0)
    target = torch.randn(3, 2 * K, D)
    base = training_scheduler(prediction)
    oracle = Oracle(target, base)
    mask = torch.ones(3, 2 * K, dtype=torch.bool)
    for steps in STEP_COUNTS:
        latents = sample_latents(oracle, make_scheduler(sampler, base), mask, steps, torch.Generator().manual_seed(1))
        error = (latents - target).abs().max().item()
        assert error < 1e-2, (sampler, prediction, steps, error)


@pytest.mark.parametrize("kind", ["class", "text"])
def test_guided_sampling_feeds_each_branch_its_own_self_condition(kind):
    model = randomize_output(tiny_dit(class_names=["a", "b"]) if kind == "class" else tiny_dit(condition_dim=6))
    torch.nn.init.normal_(model.proj_in.weight, std=0.5)  # make the self-condition input matter
    recorder = Recorder(model)
    recorder.config, recorder.device = model.config, model.device
    recorder.null_class, recorder.null_conditions, recorder.prepare_conditions = model.null_class, model.null_conditions, model.prepare_conditions
    scheduler = make_scheduler("ddim", training_scheduler("v_prediction"))
    mask = torch.ones(2, K, dtype=torch.bool)
    conditions = ({"class_labels": torch.tensor([0, 1])} if kind == "class" else
                  {"condition_states": torch.randn(2, 3, 6), "condition_mask": torch.ones(2, 3, dtype=torch.bool)})
    sample_latents(recorder, scheduler, mask, 3, torch.Generator().manual_seed(0), conditions, make_guider("cfg", 4.0))
    assert len(recorder.outputs) == 3  # one doubled call per step
    assert recorder.self_conditions[0].abs().sum() == 0
    # step 2 gets, per branch, the x0 implied by that branch's own output at step 1
    first_output = recorder.outputs[0]
    t0 = scheduler.timesteps[0].expand(4)
    cond_x0, null_x0 = recorder.self_conditions[1].chunk(2)
    assert not torch.allclose(cond_x0, null_x0, atol=1e-4), "the two branches share one self-condition"
    # the conditional half is the conditional branch's estimate (x_t is the same for both halves)
    expected = x0_and_noise(scheduler, first_output, recorder.inputs[0], t0)[0]
    assert torch.allclose(recorder.self_conditions[1], expected, atol=1e-5)


def test_a_class_label_reads_the_same_from_the_cli_and_python_names_first_then_an_index():
    """The CLI passes strings, Python callers may pass ints: one rule for both (a name, else an index 0..n-1)."""
    raw = tiny_dit(class_names=["1", "2", "3", "4"])  # e.g. AG News trained without data.label_names
    assert raw.class_index(1) == raw.class_index("1") == 0  # "1" is a name: the first class
    assert raw.class_index(0) == raw.class_index("0") == 0  # not a name: index 0
    assert raw.class_index(3) == raw.class_index("3") == 2
    with pytest.raises(LatentDLMError, match="out of range"):
        raw.class_index(7)
    named = tiny_dit(class_names=["World", "Sports", "Business", "Sci/Tech"])
    assert named.class_index("Sports") == named.class_index(1) == named.class_index("1") == 1
    with pytest.raises(LatentDLMError, match="class index -1 out of range"):
        named.class_index("-1")
    with pytest.raises(LatentDLMError, match="unknown class label 'Cooking'.*World, Sports"):
        named.class_index("Cooking")


def test_the_length_head_learns_the_number_of_segments_from_the_condition():
    """Text conditions: a head on the pooled source states predicts how many segments the target has."""
    torch.manual_seed(0)
    model = tiny_dit(condition_dim=6)
    counts = torch.randint(1, S + 1, (48,))
    states = torch.randn(48, 4, 6) * 0.1
    states[:, :, 0] += counts[:, None].float()  # the source tells the length
    mask = torch.ones(48, 4, dtype=torch.bool)
    latent_mask = (torch.arange(S)[None] < counts[:, None]).repeat_interleave(K, dim=1)
    batch = {"latents": torch.randn(48, S * K, D), "latent_mask": latent_mask, "condition_states": states, "condition_mask": mask}
    scheduler, cfg = training_scheduler("v_prediction"), DiffusionObjectiveConfig()
    optimizer = torch.optim.AdamW(model.length_head.parameters(), lr=1e-2)
    for _ in range(150):
        terms = diffusion_loss(model, scheduler, batch, cfg)
        optimizer.zero_grad()
        terms["length_loss"].backward()
        optimizer.step()
    probs = model.segment_count_probs(condition_states=states, condition_mask=mask)
    assert probs.shape == (48, S) and torch.allclose(probs.sum(dim=1), torch.ones(48))
    assert (probs.argmax(dim=1) + 1 == counts).float().mean() > 0.9


def test_segment_counts_per_class_and_overall():
    model = tiny_dit(class_names=["short", "long"])
    counts, labels = torch.tensor([1, 1, 2, 3, 3, 3]), torch.tensor([0, 0, 0, 1, 1, 1])
    model.set_segment_statistics(counts, labels)
    assert torch.allclose(model.segment_count_probs(torch.tensor([0, 1])), torch.tensor([[2 / 3, 1 / 3, 0], [0, 0, 1.0]]))
    null = torch.tensor([model.null_class])
    assert torch.allclose(model.segment_count_probs(null), torch.tensor([[2 / 6, 1 / 6, 3 / 6]]))
    assert torch.allclose(model.segment_count_probs(batch_size=2), torch.tensor([[2 / 6, 1 / 6, 3 / 6]] * 2))
