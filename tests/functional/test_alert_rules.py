"""The alert rules on recorded numbers: no Trainer, no model.

The numbers are measurements from the alert benchmark (``benchmarks/alerts.py``) at the first
epoch end of a 23-step digits epoch, unless said otherwise.
"""

import math

from lightning_viz.functional.alert_rules import (
    FilterThresholds,
    dead_channel_finding,
    endless_epoch_finding,
    exploding_base,
    filter_findings,
    frozen_finding,
    network_median,
    nonfinite_activation_finding,
    over_budget_finding,
    saturation_finding,
    turn_reading,
    unfrozen_finding,
)

DEFAULTS = FilterThresholds()
HEALTHY_SGD = {
    "drift": 0.10,
    "learned": 0.10,
    "norm_ratio": 1.0,
    "step_cosine": 0.99,
    "update_noise": 0.32,
    "finite": 1.0,
}
HEALTHY_NO_BN = {**HEALTHY_SGD, "drift": 0.0087, "learned": 0.0087}  # the smallest healthy
LR_FAR_TOO_LOW = {**HEALTHY_SGD, "drift": 7.5e-6, "learned": 7.5e-6}
DEAD_RELUS = {**HEALTHY_SGD, "drift": 2.3e-4, "learned": 5.6e-7}  # AdamW decay, no gradient
REINIT = {**HEALTHY_SGD, "drift": 2.4, "learned": 1.2, "step_cosine": -0.04}
LR_100X = {**HEALTHY_SGD, "drift": 7.5, "learned": 7.5, "norm_ratio": 7.6, "step_cosine": 0.08}
# torchvision resnet18's conv1 after one epoch of SGD at lr 0.1 (weight decay 5e-4) on the 32x32
# shapes, a healthy run: initialized at a quarter of its fan-in scale, it grew 9x and rotated
RESNET_STEM = {**HEALTHY_SGD, "drift": 8.85, "learned": 8.8, "norm_ratio": 8.9, "step_cosine": 0.06}


def firing(findings):
    return {f.kind for f in findings if f.firing}


def test_healthy_measurements_fire_nothing():
    for values in (HEALTHY_SGD, HEALTHY_NO_BN):
        findings = filter_findings("conv", values, 23, DEFAULTS, first_layer=True)
        assert firing(findings) == set()
        assert {f.kind for f in findings} >= {"not_learning", "overwritten", "exploding"}


def test_not_learning_reads_what_was_learned_not_the_drift():
    for values in (LR_FAR_TOO_LOW, DEAD_RELUS):
        (finding,) = [f for f in filter_findings("c", values, 23, DEFAULTS) if f.firing]
        assert finding.kind == "not_learning"
        assert finding.value == values["learned"]
        assert "learned almost nothing in 23 optimizer steps" in finding.message
    decay_only = {**DEAD_RELUS, "drift": 0.3, "norm_ratio": 0.7}  # weight decay shrank it
    assert "not_learning" in firing(filter_findings("c", decay_only, 200, DEFAULTS))


def test_no_learning_rules_before_the_warmup_steps_or_for_frozen_layers():
    assert "not_learning" not in {f.kind for f in filter_findings("c", LR_FAR_TOO_LOW, 3, DEFAULTS)}
    frozen = filter_findings("c", LR_FAR_TOO_LOW, 100, DEFAULTS, learning=False)
    assert "not_learning" not in {f.kind for f in frozen}


def test_overwritten_layer():
    findings = filter_findings("conv1", REINIT, 115, DEFAULTS)
    (finding,) = [f for f in findings if f.firing]
    assert finding.kind == "overwritten"
    assert "re-initialization" in finding.message
    baseline = {**HEALTHY_SGD, "step_cosine": math.nan}
    assert "overwritten" not in {f.kind for f in filter_findings("c", baseline, 0, DEFAULTS)}


def test_overwritten_reads_the_first_interval_with_the_network_and_later_ones_alone():
    assert turn_reading(0, 25, reference=0) == "network"
    assert turn_reading(25, 450, reference=0) is None  # young weights over a long interval
    assert turn_reading(450, 900, reference=0) == "layer"
    assert turn_reading(25, 50, reference=0) == "layer"  # every_n_steps=25
    assert turn_reading(69, 76, reference=69) == "network"  # unfrozen at step 69
    assert turn_reading(76, 200, reference=69) is None


def test_exploding_with_hysteresis():
    assert firing(filter_findings("c", LR_100X, 23, DEFAULTS)) == {"exploding", "overwritten"}
    cooling = {**HEALTHY_SGD, "drift": 4.0}
    assert "exploding" not in firing(filter_findings("c", cooling, 46, DEFAULTS))
    assert "exploding" in firing(filter_findings("c", cooling, 46, DEFAULTS, exploding=True))
    calm = {**HEALTHY_SGD, "drift": 2.0}
    assert "exploding" not in firing(filter_findings("c", calm, 46, DEFAULTS, exploding=True))


def test_exploding_settles_once_the_learning_rate_fell_and_reads_the_drift_beyond():
    """A one-cycle schedule peaking at SGD lr 4 on the digits net (no weight decay) raised
    exploding at the peak and recovered to validation accuracy 0.99 with the drift at 13.5 for
    good: the alert stayed active to the end. It settles once the rate fell to half its peak."""
    assert exploding_base(13.5, 0.0, learning_rate=2.1, peak_learning_rate=4.0) == 0.0
    assert exploding_base(13.5, 0.0, learning_rate=2.0, peak_learning_rate=4.0) == 13.5
    assert exploding_base(13.5, 0.0, learning_rate=None, peak_learning_rate=4.0) == 0.0
    assert exploding_base(13.5, 0.0, learning_rate=0.1, peak_learning_rate=None) == 0.0
    recovered = {**HEALTHY_SGD, "drift": 13.5}
    assert "exploding" in firing(filter_findings("c", recovered, 161, DEFAULTS, exploding=True))
    settled = filter_findings(
        "c", recovered, 161, DEFAULTS, exploding=True, drift_base=13.5, settled=(0.4, 4.0)
    )
    assert "exploding" not in firing(settled)
    (clearing,) = [f for f in settled if f.kind == "exploding"]
    assert clearing.cleared.startswith(
        "the learning rate fell to 0.4, at most 0.5 of its highest since the alert (4)."
    )
    # still moving far after the rate fell (the lowered rate is still far too high): again
    moving = {**HEALTHY_SGD, "drift": 19.0}
    (finding,) = [
        f
        for f in filter_findings("c", moving, 300, DEFAULTS, drift_base=13.5, network_drift=5.4)
        if f.firing
    ]
    assert (finding.kind, finding.value) == ("exploding", 5.5)
    assert "moved 5.5x their initial norm (at least the default init's) since the learning " in (
        finding.message
    )
    assert "rate last fell, at a drift of 13.5, and the network's layers 5.4x" in finding.message


def test_exploding_needs_the_network_to_move_not_one_layer():
    trained_stem = {**RESNET_STEM, "step_cosine": 0.99}
    healthy = filter_findings("conv1", trained_stem, 64, DEFAULTS, network_drift=0.71)
    assert firing(healthy) == set()
    far_too_high = filter_findings("conv1", trained_stem, 64, DEFAULTS, network_drift=10.6)
    (finding,) = [f for f in far_too_high if f.firing]
    assert finding.kind == "exploding"
    assert (
        "moved 8.85x their initial norm (at least the default init's), and the network's layers "
        "10.6x in the median" in finding.message
    )
    assert network_median([0.7, 8.85, math.nan, 0.5, 0.9]) == 0.8
    assert math.isnan(network_median([math.nan]))


def test_overwritten_in_the_first_interval_needs_the_network_to_turn():
    """From the weights at train start, a small-init stem turns away alone in a healthy run
    (the network's median 0.825 in resnet18-sgd-0.1); a learning rate far too high turns most
    layers, from scratch or from pretrained weights (0.335 in finetune-resnet18-lr-far-too-high)."""
    stem = {**RESNET_STEM, "drift": 1.0}
    assert firing(filter_findings("conv1", stem, 32, DEFAULTS)) == {"overwritten"}
    healthy = filter_findings("conv1", stem, 32, DEFAULTS, network_cosine=0.825)
    assert firing(healthy) == set()
    far_too_high = filter_findings("conv1", stem, 32, DEFAULTS, network_cosine=0.335)
    (finding,) = [f for f in far_too_high if f.firing]
    assert finding.kind == "overwritten"
    assert "then and now is 0.06, and 0.34 in the network's median" in finding.message
    assert "When fine-tuning, that replaced what the pretrained weights had" in finding.message
    assert firing(filter_findings("conv1", REINIT, 115, DEFAULTS)) == {"overwritten"}


def test_not_learning_reads_the_layer_against_the_network():
    """A user's gentle fine-tune of resnet18: the pretrained stem learned 4.9e-4 in 13 steps,
    the network's median 2.45e-3. Vanishing gradients leave a layer far behind a network that
    learns; a learning rate far too low leaves the whole network behind."""
    stem = {**HEALTHY_SGD, "learned": 4.9e-4}
    assert firing(filter_findings("conv1", stem, 13, DEFAULTS)) == {"not_learning"}
    assert firing(filter_findings("conv1", stem, 13, DEFAULTS, network_learned=2.45e-3)) == set()
    starved = {**HEALTHY_SGD, "learned": 2.7e-6}  # deep-sigmoid's first layer
    assert firing(filter_findings("c", starved, 23, DEFAULTS, network_learned=0.05)) == {
        "not_learning"
    }
    too_low = {**HEALTHY_SGD, "learned": 1.1e-5}  # lr-far-too-low: the median 8.3e-6
    assert firing(filter_findings("c", too_low, 23, DEFAULTS, network_learned=8.3e-6)) == {
        "not_learning"
    }


def test_collapse():
    collapsed = {**HEALTHY_SGD, "norm_ratio": 6e-5, "drift": 1.0, "learned": 0.5}
    assert "collapse" in firing(filter_findings("c", collapsed, 23, DEFAULTS))


def test_noisy_filters_on_the_first_layer_once_it_learned():
    noise = {**HEALTHY_SGD, "learned": 0.3, "update_noise": 0.97}
    assert firing(filter_findings("c", noise, 50, DEFAULTS, first_layer=True)) == {"noisy_filters"}
    assert firing(filter_findings("c", noise, 50, DEFAULTS, first_layer=False)) == set()
    barely = {**noise, "learned": 0.05}  # too little learned for its update noise to mean much
    assert firing(filter_findings("c", barely, 50, DEFAULTS, first_layer=True)) == set()
    healthy_rgb_adamw = {**noise, "update_noise": 0.84}  # the noisiest healthy first layer
    assert firing(filter_findings("c", healthy_rgb_adamw, 50, DEFAULTS, first_layer=True)) == set()
    # a trial's re-initialized layer raised it beside overwritten, with no word of either
    (finding,) = [
        f for f in filter_findings("c", noise, 50, DEFAULTS, first_layer=True) if f.firing
    ]
    assert "Where overwritten fired on it too, the layer was re-initialized" in finding.message


def test_noisy_filters_reads_kernels_of_at_least_5x5():
    """Healthy 3x3 and 4x4 stems reached the threshold (a spectrogram CNN at validation
    accuracy 1.0, timm's regnetx_002 and convnext_atto): too few pixels for smooth structure."""
    noise = {**HEALTHY_SGD, "learned": 0.3, "update_noise": 0.97}
    for kernel, fires in ((3, False), (4, False), (5, True), (7, True), (None, True)):
        findings = filter_findings("c", noise, 50, DEFAULTS, first_layer=True, kernel_size=kernel)
        assert ("noisy_filters" in firing(findings)) == fires, kernel


def test_noisy_filters_reads_a_layer_whose_images_are_not_noise_themselves():
    """A zero-init resnet18's stem update read 0.96 to 1.0 at validation accuracy 1.0 on shapes
    over white noise (patch noise 0.87): a sum of noise patches is noise."""
    noise = {**HEALTHY_SGD, "learned": 0.3, "update_noise": 0.97}
    for input_noise, fires in ((0.15, True), (0.7, True), (0.87, False), (math.nan, True)):
        findings = filter_findings(
            "c", noise, 50, DEFAULTS, first_layer=True, input_noise=input_noise
        )
        assert ("noisy_filters" in firing(findings)) == fires, input_noise


def test_nonfinite_weights():
    nan = {key: math.nan for key in HEALTHY_SGD} | {"finite": 0.0}
    assert "nonfinite_weights" in firing(filter_findings("c", nan, 80, DEFAULTS))


def test_frozen_notice_lists_the_layers():
    finding = frozen_finding(["backbone.0", "backbone.3"], watched=5)
    assert (finding.kind, finding.firing, finding.value) == ("frozen", True, 2.0)
    assert "'backbone.0', 'backbone.3'" in finding.message
    assert "They get no learning alerts while frozen." in finding.message


def test_unfrozen_notice_says_from_which_weights_the_layers_are_read():
    finding = unfrozen_finding(["backbone.0", "backbone.3"], step=69)
    assert (finding.kind, finding.layer, finding.value) == ("unfrozen", "backbone.0, backbone.3", 2)
    assert "2 watched layer(s) began training at step 69 (an unfreeze)" in finding.message
    assert "measured from their weights at step 69, and compared with each other's" in (
        finding.message
    )


def test_a_frozen_notice_of_every_watched_layer_says_nothing_it_reads_trains():
    """A user's frozen backbone diverged in its Linear head without an alert."""
    message = frozen_finding(["backbone.0", "backbone.3"], watched=2).message
    assert "That is every layer FilterMonitor watches: it raises no learning alert" in message
    assert "watch the loss for a divergence" in message


def test_dead_channels_at_and_below_the_threshold():
    assert dead_channel_finding("relu", 0.5, 0.5, 2).firing
    finding = dead_channel_finding("relu", 0.25, 0.5, 2)
    assert not finding.firing
    assert "25% of the channels of layer 'relu'" in finding.message
    # a user's activation grid showed the 'dead' channels bright: it runs in eval mode
    assert "in training mode" in finding.message
    assert "the probe views run in eval mode" in finding.message


def test_saturation():
    assert saturation_finding("sigmoid", 0.93, 0.5, 1).firing
    assert not saturation_finding("sigmoid", 0.1, 0.5, 1).firing


def test_nonfinite_activations_name_the_step():
    finding = nonfinite_activation_finding("relu#2", True, 17)
    assert finding.firing
    assert "'relu#2' produced NaN or Inf at step 17" in finding.message


def test_the_budget_notice_says_over_only_past_the_budget():
    """A trial read "took 1.9% ..., over the budget of 2.0%": the callbacks stop at 90% of it,
    counting their next piece of work."""
    parts = [("DeconvLogger", 0.012), ("GradCAMLogger", 0.007)]
    near = over_budget_finding(0.0186, parts, 0.02, 0.9, "epochs are skipped.")
    assert near.message == (
        "the callbacks took 1.9% of the training time so far (DeconvLogger 1.2%, GradCAMLogger "
        "0.7%), and their next piece of work would pass 90% of the budget of 2.0%: epochs are "
        "skipped."
    )
    over = over_budget_finding(0.031, parts, 0.02, 0.9, "nothing was skipped.")
    assert ", over the budget of 2.0%: nothing was skipped." in over.message
    assert (over.kind, over.value, over.threshold) == ("over_budget", 0.031, 0.02)


def test_endless_epoch_notice_speaks_of_filter_alerts_only_with_filter_monitor():
    with_filters = endless_epoch_finding(["FilterMonitor", "GradCAMLogger"]).message
    assert "FilterMonitor's alerts still come every every_n_steps" in with_filters
    views_only = endless_epoch_finding(["GradCAMLogger"])
    assert (views_only.kind, views_only.value) == ("endless_epoch", 1)
    assert "FilterMonitor" not in views_only.message
    assert "what GradCAMLogger does at epoch ends" in views_only.message


def test_not_learning_clears_on_the_layers_own_learning_not_the_networks():
    """A user's run at AdamW lr 1e-6 stayed at chance to its end, and every layer's alert
    cleared by its third epoch: the network's median rose to 0.00107, past min_learned, while
    the first layer stayed at 0.00059, less than twice behind it."""
    slow = {**HEALTHY_SGD, "learned": 5.9e-4}
    args = ("model.0", slow, 69, DEFAULTS)
    assert firing(filter_findings(*args, network_learned=1.07e-3)) == set()  # not yet raised
    assert firing(filter_findings(*args, network_learned=1.07e-3, not_learning=True)) == {
        "not_learning"
    }
    caught_up = {**slow, "learned": 1.4e-3}
    assert firing(filter_findings("model.0", caught_up, 69, DEFAULTS, not_learning=True)) == set()
