"""What one loader core gets through per second, by JPEG decoder, for images of ImageNet's size at
224 px: the training transform (RandomResizedCrop + flip) and the evaluation one (resize 256 +
centre crop 224), each against today's path (PIL + `transforms.v1`, float ToTensor + Normalize)
in the same run, and, with `--device cuda`, `--decode gpu`'s batched decode, crop and flip on the
GPU (`batched_gpu_img_s`; `batched_cpu_img_s_core` is the same code on one CPU thread).

    python bench/decode.py                  # CPU decoders, about a minute on this 2-core CPU
    python bench/decode.py --device cuda    # adds the batched GPU decode (also in bench/gpu.sh)

The images are written in memory (`csg.testing.photos`): scikit-learn's two sample
photographs, cut and rescaled at random to ImageNet's typical size (long side 500, short side
333-375, quality 90). Each CPU path runs on one thread, so its img/s is img/s per core; the
uint8 paths stop at a uint8 tensor, since their conversion and normalisation happen on the
device after the copy. `mad_vs_ref` is the mean
absolute difference (0-255) from the reference on the same crop box. `fused` is what training
runs: torchvision's decoder and `csg.data.crops`' fused crop, resize and flip, against
`tv_v2` (the same decoder and transforms.v2's RandomResizedCrop + flip). The last line is the summary.
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image
from torchvision import io as tv_io
from torchvision import transforms as v1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from csg.cli import summary
from csg.data.device_decode import Encoded, EncodedBatch
from csg.data.imagefolder import train_transform_uint8
from csg.method.engine import device_pixels
from csg.testing.photos import photo_jpegs

SIZE, EVAL_RESIZE = 224, 256
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pil_decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def pil_uint8(data: bytes) -> torch.Tensor:
    return F.pil_to_tensor(pil_decode(data))


def tv_decode(data: bytes) -> torch.Tensor:
    return tv_io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=tv_io.ImageReadMode.RGB)


REFERENCE = {
    "train": v1.Compose([v1.RandomResizedCrop(SIZE), v1.RandomHorizontalFlip(), v1.ToTensor(), v1.Normalize(MEAN, STD)]),
    "eval": v1.Compose([v1.Resize(EVAL_RESIZE), v1.CenterCrop(SIZE), v1.ToTensor(), v1.Normalize(MEAN, STD)]),
}
UINT8 = {
    "train": v2.Compose([v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip()]),
    "eval": v2.Compose([v2.Resize(EVAL_RESIZE, antialias=True), v2.CenterCrop(SIZE)]),
}
DECODERS = {"pil_v2": pil_uint8, "tv_v2": tv_decode}


def cpu_img_s(jpegs: list[bytes], decode, transform, passes: int) -> float:
    """Best of `passes` over the images, one thread: images per second per core."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for data in jpegs:
            transform(decode(data))
        best = min(best, time.perf_counter() - start)
    return len(jpegs) / best


def agreement(jpegs: list[bytes], decode, seed: int = 0) -> float:
    """Mean |uint8 path - reference| on the same RandomResizedCrop boxes, in 0-255 units."""
    torch.manual_seed(seed)
    diffs = []
    for data in jpegs:
        image = pil_decode(data)
        top, left, h, w = v1.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
        ref = v1.functional.pil_to_tensor(v1.functional.resized_crop(image, top, left, h, w, [SIZE, SIZE]))
        fast = F.resized_crop(decode(data), top, left, h, w, [SIZE, SIZE], antialias=True)
        diffs.append((ref.float() - fast.float()).abs().mean().item())
    return float(np.mean(diffs))


def batched_img_s(jpegs: list[bytes], device: str, batch: int, passes: int) -> float:
    """`--decode gpu`'s own code (csg.data.device_decode) on `device`: a batch decoded in one
    call, each image cropped, resized and flipped there, then made float as the engine does."""
    encoded = [Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8), str(n)) for n, data in enumerate(jpegs)]
    transform = train_transform_uint8(SIZE, "imagenet")
    batches = [EncodedBatch(encoded[i:i + batch], transform) for i in range(0, len(encoded), batch)]
    device_pixels(batches[0], torch.device(device))  # warm-up: the decoder's handles and kernels
    best = float("inf")
    for _ in range(passes):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for chunk in batches:
            device_pixels(chunk, torch.device(device))
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return len(jpegs) / best


def main(argv=None):
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--images", type=int, default=256, help="JPEGs written and decoded per pass")
    parser.add_argument("--passes", type=int, default=2, help="passes per path; the best is kept")
    parser.add_argument("--batch", type=int, default=256, help="batch of the batched decode")
    parser.add_argument("--device", default="cpu", help="cuda adds the batched decode on the GPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    jpegs = photo_jpegs(args.images)
    print(f"{len(jpegs)} JPEGs, mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} KB", flush=True)
    fields = {}
    for mode in ("train", "eval"):
        ref = cpu_img_s(jpegs, pil_decode, REFERENCE[mode], args.passes)
        fields[f"ref_{mode}_img_s_core"] = ref
        for name, decode in DECODERS.items():
            fast = cpu_img_s(jpegs, decode, UINT8[mode], args.passes)
            fields[f"{name}_{mode}_img_s_core"] = fast
            fields[f"{name}_{mode}_over_ref"] = fast / ref
        if mode == "train":  # the product's transform: csg.data.crops, fused
            fused = cpu_img_s(jpegs, tv_decode, train_transform_uint8(SIZE, "imagenet"), args.passes)
            fields["fused_train_img_s_core"], fields["fused_train_over_ref"] = fused, fused / ref
            fields["fused_over_tv_v2"] = fused / fields["tv_v2_train_img_s_core"]
        print(f"{mode}: " + ", ".join(f"{k.removeprefix(mode + '_')}={v:.2f}" for k, v in fields.items()
                                     if f"_{mode}_" in k), flush=True)
    for name, decode in DECODERS.items():
        fields[f"{name}_mad_vs_ref"] = agreement(jpegs[:32], decode)
    fields["batched_cpu_img_s_core"] = batched_img_s(jpegs, "cpu", args.batch, args.passes)
    if args.device == "cuda":
        fields["batched_gpu_img_s"] = batched_img_s(jpegs * 4, "cuda", args.batch, args.passes)
        fields["gpu"] = torch.cuda.get_device_name().replace(" ", "_")
    print("decode: " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
