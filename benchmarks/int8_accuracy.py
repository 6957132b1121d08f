"""What int8 costs in accuracy: ``optimize(model, dtype="int8")`` against float32 on real data.

    python benchmarks/int8_accuracy.py --digits runs/<run>/best.safetensors [--cfsr-dir ../shared/weights/cfsr]

* A digits classifier (the `make demo` model, or any digits run): top-1 on the 360 held-out real
  handwritten digits, float32 vs int8, and how many predictions change.
* CFSR with the official x2/x3/x4 weights: Y-channel PSNR/SSIM on scikit-image's bundled photos,
  float32 vs int8 (BasicSR convention, bicubic-downsampled inputs).
Prints the tables and writes benchmarks/results/int8_accuracy.json. Speed is measured separately
(benchmarks/metaformer_speed.py, ``@fast-int8``).
"""
import argparse
import json
from pathlib import Path

import torch

import convformer
from convformer.vision.inference import model_from_weights
from convformer.vision.digits import DigitsDataset, load_digits_tensors
from convformer.sr.data import BUNDLED_PHOTOS, bundled_photo
from convformer.sr.task import score_image
from convformer.fileio import atomic_write
from convformer.weights.hub import local_weight_dirs


def digits_rows(weights: str) -> dict:
    model, meta = model_from_weights(weights)
    size = model.cfg.img_size
    _, _, images, labels = load_digits_tensors(size)
    data = DigitsDataset(images, labels, train=False)
    x = torch.stack([data[i][0] for i in range(len(data))])
    out = {}
    with torch.inference_mode():
        for label, net in (("fp32", model), ("int8", convformer.optimize(model, dtype="int8"))):
            out[label] = net(x)
    fp32, int8 = out["fp32"].argmax(1), out["int8"].argmax(1)
    return {"weights": str(weights), "model": meta.get("architecture"), "images": len(labels),
            "top1_fp32": round(100.0 * (fp32 == labels).float().mean().item(), 2),
            "top1_int8": round(100.0 * (int8 == labels).float().mean().item(), 2),
            "changed_predictions": int((fp32 != int8).sum()),
            "max_abs_logit_diff": round((out["fp32"] - out["int8"]).abs().max().item(), 4)}


def cfsr_rows(weights_dir: Path, scales=(2, 3, 4)) -> list[dict]:
    rows = []
    for scale in scales:
        model = convformer.create_model(f"cfsr_x{scale}", pretrained=str(weights_dir / f"CFSR_x{scale}.pth")).eval()
        int8 = convformer.optimize(model, dtype="int8")
        for name in BUNDLED_PHOTOS:
            fp, _ = score_image(model, None, bundled_photo(name), scale)
            q, _ = score_image(int8, None, bundled_photo(name), scale)
            rows.append({"scale": scale, "photo": name, "psnr_fp32": fp["psnr"], "psnr_int8": q["psnr"],
                         "ssim_fp32": fp["ssim"], "ssim_int8": q["ssim"], "bicubic_psnr": fp["bicubic_psnr"]})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", required=True, help="weights of a digits classifier (e.g. make demo's best.safetensors)")
    parser.add_argument("--cfsr-dir", default=None, help="folder with CFSR_x{2,3,4}.pth [default: local weight folders]")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "int8_accuracy.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    digits = digits_rows(args.digits)
    print(f"digits ({digits['model']}, {digits['images']} test images): top-1 fp32 {digits['top1_fp32']:.2f}%  "
          f"int8 {digits['top1_int8']:.2f}%  changed predictions {digits['changed_predictions']}  "
          f"max |logit diff| {digits['max_abs_logit_diff']}")
    cfsr_dir = Path(args.cfsr_dir) if args.cfsr_dir else next(
        (d / "cfsr" for d in local_weight_dirs() if (d / "cfsr" / "CFSR_x2.pth").is_file()), None)
    rows = cfsr_rows(cfsr_dir) if cfsr_dir else []
    if rows:
        print(f"{'scale':>5}  {'photo':<22}{'PSNR fp32':>10}{'PSNR int8':>10}{'delta dB':>9}{'SSIM fp32':>10}{'SSIM int8':>10}")
        for r in rows:
            print(f"{r['scale']:>5}  {r['photo']:<22}{r['psnr_fp32']:>10.2f}{r['psnr_int8']:>10.2f}"
                  f"{r['psnr_int8'] - r['psnr_fp32']:>9.3f}{r['ssim_fp32']:>10.4f}{r['ssim_int8']:>10.4f}")
    else:
        print("CFSR weights not found: pass --cfsr-dir (skipped)")
    report = {"digits": digits, "cfsr": rows, "torch": torch.__version__}
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
