"""Mixed precision: the weight bits of each conv/linear layer chosen under a size or work budget.

    python mixed_precision.py --model=resnet18 --budget_bytes=4200000
    python quant_model.py --model=resnet18 --bits=results/mixed_precision/resnet18_bits.json

1. Sensitivity: each conv/linear layer alone has its weights lowered to 8, 6, 4, 3 and 2 bits (as the
   quantizer lowers them: its WEIGHT_METHOD and BIAS_CORRECTION on the layer's inputs over the
   calibration images, dequantized into the BN-folded float model; every other layer float) and
   the model runs on SEARCH_IMAGES held-out training images (the validation split train_model.py
   keeps out of training, past the calibration images; never the test set). The drop is the mean
   KL divergence of the softmax from the float model's (the search's cost; smoother than the
   accuracy on a few hundred images, which is recorded beside it). Cached in
   RESULTS_DIR/{model}_sensitivity.json: a rerun with the same settings measures nothing.
2. Search: the summed sensitivities' Pareto front over the layers' choices (an exact dynamic
   programme), and on it the least sensitive configuration within --budget_bytes (packed weight
   bytes, ceil(C*K*bits/8) a layer, docs/contract.md) or --budget_bitops (MACs x weight bits x
   the layer input's activation bits). Written to RESULTS_DIR/{model}_bits.json, the --bits format.
3. Verification: the chosen widths through the real quantizer (every quantization setting as given,
   WEIGHT_METHOD included) and the torch integer engine on the same held-out images, beside the float
   model and uniform 8-bit weights.
4. Frontier (--frontier=FRACTIONS of the W8 bytes): the searched configuration at each byte budget
   and the uniform W8/W6/W4/W3/W2 models, each quantized and run the same way:
   RESULTS_DIR/{model}_frontier.json and .png.
"""
import json
import os
import sys
import types

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_bn
from tqdm import tqdm

import config
import model as models
from data import datasets
from model import api, work
from model.fileio import ModelFileError, WriteError, atomic_open, check_not_tracked, check_writable, stage_main
from model.formats.export_format import packed_bytes
from model.ops.weighted import scale_floor, weight_count
from model.quant import methods
from model.quant.quantize import QuantizeError

CANDIDATE_BITS = (8, 6, 4, 3, 2)
EXTRA = {
    "budget_bytes": (0, "the most packed weight bytes the chosen widths may take, all layers together "
                        "(give this or --budget_bitops)"),
    "budget_bitops": (0, "the most bit operations per image: the sum over conv/linear layers of MACs x weight "
                         "bits x input activation bits"),
    "search_images": (500, "held-out training images (the validation split, past the calibration images) that "
                           "measure the sensitivities and the accuracies"),
    "frontier": ("0.3125,0.375,0.5,0.625,0.75", "byte budgets of the frontier plot, as fractions of the W8 "
                                                "bytes, comma-separated (\"\" = no frontier)"),
    "results_dir": ("results/mixed_precision", "where {model}_sensitivity.json, _bits.json and _frontier.json/.png "
                                               "go"),
}


def parse_budget(cfg):
    """('bytes' or 'bitops', N) of the one budget given; ConfigError otherwise."""
    given = [(kind, getattr(cfg, f"budget_{kind}")) for kind in ("bytes", "bitops")
             if f"budget_{kind}" in cfg.given]
    if len(given) != 1:
        raise config.ConfigError("give one budget: --budget_bytes=N (packed weight bytes) or --budget_bitops=N "
                                 "(MACs x weight bits x activation bits)")
    kind, value = given[0]
    if value <= 0:
        raise config.ConfigError(f"--budget_{kind}={value}: expected a positive number of {kind}")
    return kind, value


def parse_fractions(text):
    """The frontier's budgets as fractions of the W8 bytes, each in (0, 1]."""
    try:
        fractions = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fractions = None
    if fractions is None or not all(0 < f <= 1 for f in fractions):
        raise config.ConfigError(f"--frontier={text}: expected comma-separated fractions of the W8 bytes in (0, 1], "
                                 f"e.g. 0.375,0.5")
    return sorted(set(fractions))


def check_settings(cfg):
    """The run's settings, refused before any work: ConfigError naming the option."""
    for key in ("bits", "weight_bits"):
        if key in cfg.given:
            raise config.ConfigError(f"--{key}: mixed_precision.py chooses the weight bits; leave it out")
    if cfg.search_images < 1:
        raise config.ConfigError(f"--search_images={cfg.search_images}: expected a positive number of images")
    return parse_budget(cfg), parse_fractions(cfg.frontier)


# --- the model, the images -----------------------------------------------------------------------------

def load_model(cfg):
    """(float module, mean, std, dataset, checkpoint sha256) of cfg.model, as quant_model.py loads it."""
    _, mean, std = config.check_input_settings(cfg.input_shape, cfg.input_mean, cfg.input_std)
    if config.user_model(cfg.model):
        from quant_model import user_float        # imported here: config.usage shows its docstring once imported
        net, sha = user_float(cfg.model, cfg.checkpoint)
        return net.eval(), mean, std, api.CUSTOM_DATASET, sha
    net, header = models.load_raw(cfg)
    return net, mean, std, models.spec(cfg.model).dataset, header["sha256"]


def split_images(cfg, dataset):
    """(calibration images, held-out images, their labels): quant_model.py's calibration pick (the
    first CALIB_IMAGES of a permutation by SEED) and the next SEARCH_IMAGES of the same permutation;
    of the built-in training sets only its first VAL_IMAGES, the split train_model.py never trains on."""
    shape, _, _ = config.check_input_settings(cfg.input_shape, cfg.input_mean, cfg.input_std)
    if cfg.calib_data:
        images, labels = datasets.load_images(cfg.calib_data, shape)
        held_out_end = len(images)
    else:
        images, labels = datasets.load(dataset, "train", cfg.data_dir, cfg.mirror_dir)
        held_out_end = config.VAL_IMAGES
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
    calib_end = min(cfg.calib_images, len(images))
    if calib_end + cfg.search_images > held_out_end:
        raise config.ConfigError(f"--calib_images={cfg.calib_images} and --search_images={cfg.search_images}: the "
                                 f"held-out images are {held_out_end} (the calibration ones among them); give fewer")
    held_out = order[calib_end:calib_end + cfg.search_images]
    return images[order[:calib_end]], images[held_out], torch.as_tensor(labels)[held_out].numpy()


def folded_float(net, mean, std, channels):
    """The float model as the quantizer sees it (normalisation in front, BN folded into the convs): the
    modules whose weights the quantizer rounds, by op name (the module's path, dots as underscores)."""
    gm = fold_bn(fx.symbolic_trace(api.float_model(net, mean, std, channels)))
    layers = {name.replace(".", "_"): mod for name, mod in gm.named_modules()
              if isinstance(mod, (nn.Conv2d, nn.Linear))}
    return gm.eval(), layers


def float_logits(gm, images, batch=250):
    with torch.no_grad():
        return torch.cat([gm(images[i:i + batch].float() / 255.0) for i in range(0, len(images), batch)])


# --- costs ---------------------------------------------------------------------------------------------

def weighted_layers(quant_list):
    """{name: {"weights": C*K, "macs": per image, "act_bits": of the layer's input, "in_scale"}} of the
    conv/linear ops, in op order."""
    return {op["name"]: {"weights": weight_count(op, quant_list[op["inputs"][0]]),
                         "macs": work.op_work(op, quant_list),
                         "act_bits": quant_list[op["inputs"][0]]["act_bits"],
                         "in_scale": quant_list[op["inputs"][0]]["scale"]}
            for op in quant_list if "weight_bits" in op}


def layer_cost(layer, bits, kind):
    """A layer's packed weight bytes, or its bit operations per image, at `bits`-wide weights."""
    return packed_bytes(layer["weights"], bits) if kind == "bytes" else layer["macs"] * bits * layer["act_bits"]


def tuple_cost(quant_list, kind):
    """The bytes or bit operations of a quantized model, each layer at the width its op records."""
    layers = weighted_layers(quant_list)
    return sum(layer_cost(layers[op["name"]], op["weight_bits"], kind) for op in quant_list if "weight_bits" in op)


# --- sensitivity -----------------------------------------------------------------------------------------

def lowered(mod, layer, bits, cfg, inputs):
    """The module's weight and bias as the quantizer makes them at `bits` (its weight method and bias
    correction on the layer's calibration inputs, methods.quantize_layer, its scale floor), in float."""
    bias = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(mod.weight.shape[0])
    method, correct = methods.resolve(cfg.weight_method, cfg.bias_correction, bits)
    q, scale, zero_point, bias = methods.quantize_layer(mod.weight.detach(), bias, cfg.weight_mode, bits, method,
                                                        scale_floor(bias, layer["in_scale"]), inputs, correct)
    values = methods.dequantized(q, scale, zero_point)
    return torch.from_numpy(values).to(mod.weight.dtype), torch.from_numpy(np.asarray(bias)).to(mod.weight.dtype)


def kl_and_accuracy(logits, reference, labels):
    """(mean KL(softmax(reference) || softmax(logits)) in nats, accuracy) of a run on held-out images."""
    ref = torch.log_softmax(reference.double(), 1)
    kl = (ref.exp() * (ref - torch.log_softmax(logits.double(), 1))).sum(1).mean()
    return float(kl), float((logits.argmax(1).numpy() == labels).mean())


def measure_sensitivity(gm, modules, layers, images, labels, reference, cfg, calib):
    """{layer: {bits: {"kl", "accuracy"}}}: the model with only that layer's weights at `bits`; the
    layer inputs the weight methods need measured on the calibration images, on the float model."""
    result = {name: {} for name in layers}
    needs_inputs = any(method != "rtn" or correct for method, correct in
                       (methods.resolve(cfg.weight_method, cfg.bias_correction, bits) for bits in CANDIDATE_BITS))
    node_of = {n.target.replace(".", "_"): n.name for n in gm.graph.nodes if n.op == "call_module"}
    statistics = methods.InputStatistics(gm, calib.float() / 255.0, [node_of[name] for name in layers], seed=cfg.seed)
    with tqdm(total=len(layers) * len(CANDIDATE_BITS), desc="sensitivity", leave=False) as bar:
        for name, layer in layers.items():
            mod = modules[name]
            inputs = statistics[node_of[name]] if needs_inputs else None   # before any weight is lowered
            weight, bias = mod.weight, mod.bias
            for bits in CANDIDATE_BITS:
                low_weight, low_bias = lowered(mod, layer, bits, cfg, inputs)
                mod.weight, mod.bias = nn.Parameter(low_weight), nn.Parameter(low_bias)
                kl, accuracy = kl_and_accuracy(float_logits(gm, images), reference, labels)
                result[name][str(bits)] = {"kl": kl, "accuracy": accuracy}
                bar.update()
            mod.weight, mod.bias = weight, bias
    return result


def cached_sensitivity(path, key, measure):
    """The sensitivities cached at `path` when they were measured with `key`, else measure() written there."""
    try:
        with open(path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            print(f"sensitivities from {path}")
            return cached["layers"]
    except (OSError, ValueError):
        pass
    layers = measure()
    write_json(path, {"key": key, "layers": layers})
    return layers


# --- search --------------------------------------------------------------------------------------------

def pareto_front(layers, sensitivity, kind):
    """Every configuration that no other beats on both cost and summed KL, cheapest first:
    [(cost, summed KL, {layer: bits})]. Exact: a configuration off the front of the first k layers
    stays off it with any choice for the rest."""
    front = [(0, 0.0, ())]
    for name, layer in layers.items():
        options = [(layer_cost(layer, bits, kind), sensitivity[name][str(bits)]["kl"], bits) for bits in CANDIDATE_BITS]
        merged = sorted((cost + c, kl + s, chosen + (bits,)) for cost, kl, chosen in front for c, s, bits in options)
        front = []
        for point in merged:                 # by cost, then KL: keep each point that lowers the KL
            if not front or point[1] < front[-1][1]:
                front.append(point)
    return [(cost, kl, dict(zip(layers, chosen))) for cost, kl, chosen in front]


def choose(front, budget):
    """The least sensitive point of the front within `budget` (the costliest that fits), or None."""
    fitting = [point for point in front if point[0] <= budget]
    return fitting[-1] if fitting else None


# --- verification and frontier ---------------------------------------------------------------------------

def evaluate(net, calib, mean, std, dataset, sha, cfg, images, labels, **widths):
    """{"bytes", "bitops", "accuracy"} of the model quantized by the real quantizer with `widths` (bits=
    or weight_bits=) and run by the torch integer engine on the held-out images."""
    run_cfg = types.SimpleNamespace(**{**vars(cfg), **widths})
    state, quant_list = api.quantize_cfg(net, calib, run_cfg, dataset, mean, std, sha,
                                         progress=lambda it: tqdm(it, desc="calibrating", leave=False))
    logits = api.run_integer(state, quant_list, images, engine="torch", batch=50)
    return {"bytes": tuple_cost(quant_list, "bytes"), "bitops": tuple_cost(quant_list, "bitops"),
            "accuracy": float((logits.argmax(1) == labels).mean())}, quant_list


def plot_frontier(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    searched = result["searched"]
    ax.plot([p["bytes"] / 1024 for p in searched], [100 * p["accuracy"] for p in searched], "o-",
            label="mixed (searched)")
    for p in result["uniform"]:
        ax.plot(p["bytes"] / 1024, 100 * p["accuracy"], "s", color="tab:orange")
        ax.annotate(f"W{p['weight_bits']}", (p["bytes"] / 1024, 100 * p["accuracy"]), textcoords="offset points",
                    xytext=(5, -10))
    ax.plot([], [], "s", color="tab:orange", label="uniform")
    ax.axhline(100 * result["float_accuracy"], color="gray", ls="--", label="float")
    ax.set_xlabel("weight memory (KiB, packed)")
    ax.set_ylabel(f"accuracy (%), {result['images']} held-out images")
    ax.set_title(f"{result['model']}: accuracy against weight size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_json(path, obj):
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def print_sensitivity(sensitivity, layers, chosen):
    print(f"{'layer':<24} {'weights':>9} " + " ".join(f"{'KL W' + str(b):>9}" for b in CANDIDATE_BITS) + "  chosen")
    for name, layer in layers.items():
        kls = " ".join(f"{sensitivity[name][str(b)]['kl']:>9.2e}" for b in CANDIDATE_BITS)
        print(f"{name[:24]:<24} {layer['weights']:>9} {kls}  W{chosen[name]}")


@stage_main
def main():
    cfg = config.load_or_exit(extra=EXTRA, stage="quant_model.py")
    name = config.model_name(cfg)
    results_dir = cfg.results_dir if "results_dir" in cfg.given else config.in_checkout(cfg.results_dir)
    paths = {what: os.path.join(results_dir, f"{name}_{what}") for what in
             ("sensitivity.json", "bits.json", "frontier.json", "frontier.png")}
    try:
        (kind, budget), fractions = check_settings(cfg)
        check_writable(results_dir, "--results_dir")
        check_not_tracked(list(paths.values()), cfg.overwrite, "--results_dir=DIR")
        net, mean, std, dataset, sha = load_model(cfg)
        calib, images, labels = split_images(cfg, dataset)
    except config.ConfigError as err:
        sys.exit(f"config error: {err}")
    except (ModelFileError, WriteError, datasets.DatasetError) as err:
        sys.exit(f"error: {err}")
    cfg = types.SimpleNamespace(**{**vars(cfg), "model": name, "calib_images": len(calib)})
    os.makedirs(results_dir, exist_ok=True)
    print(f"{name}: {len(calib)} calibration images, {len(images)} held-out images; budget {budget} {kind}")

    evaluated = {}       # by widths: a frontier point that is the chosen configuration is quantized once

    def measure(**widths):
        key = json.dumps(widths, sort_keys=True)
        if key not in evaluated:
            evaluated[key] = evaluate(net, calib, mean, std, dataset, sha, cfg, images, labels, **widths)
        return evaluated[key]

    try:
        w8, reference_list = measure(weight_bits=8)
    except QuantizeError as err:
        sys.exit(f"error: {err}")
    gm, modules = folded_float(net, mean, std, calib.shape[1])
    layers = {n: layer for n, layer in weighted_layers(reference_list).items() if n in modules}
    fixed = {k: tuple_cost(reference_list, k) - sum(layer_cost(layer, 8, k) for layer in layers.values())
             for k in ("bytes", "bitops")}         # the weighted ops no module holds (an input normalisation)
    smallest = fixed[kind] + sum(layer_cost(layer, min(CANDIDATE_BITS), kind) for layer in layers.values())
    if budget < smallest:
        sys.exit(f"config error: --budget_{kind}={budget} is below the smallest configuration, every layer at "
                 f"{min(CANDIDATE_BITS)} bits: {smallest} {kind}")

    reference = float_logits(gm, images)
    _, float_accuracy = kl_and_accuracy(reference, reference, labels)
    key = {"model": name, "checkpoint_sha256": sha, "weight_mode": cfg.weight_mode, "seed": cfg.seed,
           "calib_images": len(calib), "search_images": len(images), "candidate_bits": list(CANDIDATE_BITS),
           "weight_method": cfg.weight_method, "bias_correction": cfg.bias_correction,
           "input_mean": mean, "input_std": std, "calib_data": cfg.calib_data}
    sensitivity = cached_sensitivity(
        paths["sensitivity.json"], key,
        lambda: measure_sensitivity(gm, modules, layers, images, labels, reference, cfg, calib))

    point = choose(pareto_front(layers, sensitivity, kind), budget - fixed[kind])
    chosen = {n: {"weight_bits": bits} for n, bits in point[2].items()}
    write_json(paths["bits.json"], chosen)
    print_sensitivity(sensitivity, layers, point[2])
    print(f"wrote {paths['bits.json']}")
    mixed, _ = measure(bits=chosen)
    print(f"held-out accuracy on {len(images)} images: float {100 * float_accuracy:.2f}%, W8 "
          f"{100 * w8['accuracy']:.2f}% ({w8['bytes']} bytes, {w8['bitops']} bitops), mixed "
          f"{100 * mixed['accuracy']:.2f}% ({mixed['bytes']} bytes = {mixed['bytes'] / w8['bytes']:.3f} of W8, "
          f"{mixed['bitops']} bitops; summed KL {point[1]:.3g})")
    if not fractions:
        return

    write_frontier(paths, fractions, layers, sensitivity, fixed, w8, measure,
                   {"model": name, "images": len(images), "calib_images": len(calib),
                    "weight_method": cfg.weight_method, "float_accuracy": float_accuracy, "w8_bytes": w8["bytes"]})


def write_frontier(paths, fractions, layers, sensitivity, fixed, w8, measure, result):
    """The accuracy-size frontier: uniform widths and the search at each fraction of the W8 bytes, each
    quantized and run through measure(**widths); JSON (`result` plus the points) and PNG at paths."""
    byte_front = pareto_front(layers, sensitivity, "bytes")
    uniform = []
    for bits in tqdm(CANDIDATE_BITS, desc="uniform", leave=False):
        uniform.append({"weight_bits": bits, **measure(weight_bits=bits)[0]})
    searched = []
    for fraction in tqdm(fractions, desc="frontier", leave=False):
        budget_bytes = int(fraction * w8["bytes"])
        found = choose(byte_front, budget_bytes - fixed["bytes"])
        if found is None:
            continue                         # below every layer at the lowest width
        bits = {n: {"weight_bits": b} for n, b in found[2].items()}
        measured, _ = measure(bits=bits)
        searched.append({"fraction_of_w8": fraction, "budget_bytes": budget_bytes, **measured, "summed_kl": found[1],
                         "bits": found[2]})
    result = {**result, "uniform": uniform, "searched": searched}
    write_json(paths["frontier.json"], result)
    plot_frontier(result, paths["frontier.png"])
    for p in uniform + searched:
        what = f"W{p['weight_bits']}" if "weight_bits" in p else f"mixed <= {p['fraction_of_w8']:.4g} of W8"
        print(f"{what:<22} {p['bytes']:>10} bytes  {100 * p['accuracy']:6.2f}%")
    print(f"wrote {paths['frontier.json']} and {paths['frontier.png']}")


if __name__ == "__main__":
    main()
