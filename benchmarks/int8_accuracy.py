"""What int8 costs in accuracy on real data, against float32: ``optimize(model, dtype="int8")`` (PyTorch
dynamic int8) and ``optimize(model, runtime="onnxruntime", dtype="int8", calibration=...)`` (ONNX Runtime
static QDQ int8, calibrated on real inputs that are not scored: the digits' training images; for CFSR,
two folds of the bundled photos, each scored with the calibration of the other).

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
from convformer.sr.data import BUNDLED_PHOTOS, bicubic_down, bundled_photo, mod_crop
from convformer.sr.task import score_image
from convformer.fileio import atomic_write
from convformer.weights.hub import local_weight_dirs


def digits_rows(weights: str) -> dict:
    model, meta = model_from_weights(weights)
    size = model.cfg.img_size
    _, _, images, labels = load_digits_tensors(size)
    data = DigitsDataset(images, labels, train=False)
    x = torch.stack([data[i][0] for i in range(len(data))])
    train_images = load_digits_tensors(size)[0]
    train = DigitsDataset(train_images, torch.zeros(len(train_images), dtype=torch.long), train=False)
    calibration = [torch.stack([train[i][0] for i in range(j, j + 64)]) for j in range(0, 256, 64)]
    nets = {"fp32": model, "int8": convformer.optimize(model, dtype="int8"),
            "ort_int8": convformer.optimize(model, runtime="onnxruntime", dtype="int8", calibration=calibration)}
    with torch.inference_mode():
        out = {label: net(x) for label, net in nets.items()}
    fp32 = out["fp32"].argmax(1)
    row = {"weights": str(weights), "model": meta.get("architecture"), "images": len(labels),
           "top1_fp32": round(100.0 * (fp32 == labels).float().mean().item(), 2)}
    for label in ("int8", "ort_int8"):
        pred = out[label].argmax(1)
        row.update({f"top1_{label}": round(100.0 * (pred == labels).float().mean().item(), 2),
                    f"changed_predictions_{label}": int((fp32 != pred).sum()),
                    f"max_abs_logit_diff_{label}": round((out["fp32"] - out[label]).abs().max().item(), 4)})
    return row


def cfsr_rows(weights_dir: Path, scales=(2, 3, 4)) -> list[dict]:
    rows = []
    for scale in scales:
        model = convformer.create_model(f"cfsr_x{scale}", pretrained=str(weights_dir / f"CFSR_x{scale}.pth")).eval()
        int8 = convformer.optimize(model, dtype="int8")
        names = list(BUNDLED_PHOTOS)
        folds = [names[: len(names) // 2], names[len(names) // 2:]]
        ort_int8 = {}
        for i, fold in enumerate(folds):  # calibrated on the other fold's low-resolution inputs
            calibration = [bicubic_down(mod_crop(bundled_photo(n), scale), scale) for n in folds[1 - i]]
            net = convformer.optimize(model, runtime="onnxruntime", dtype="int8", calibration=calibration)
            ort_int8.update({n: net for n in fold})
        for name in names:
            fp, _ = score_image(model, None, bundled_photo(name), scale)
            q, _ = score_image(int8, None, bundled_photo(name), scale)
            o, _ = score_image(ort_int8[name], None, bundled_photo(name), scale)
            rows.append({"scale": scale, "photo": name, "psnr_fp32": fp["psnr"], "psnr_int8": q["psnr"],
                         "psnr_ort_int8": o["psnr"], "ssim_fp32": fp["ssim"], "ssim_int8": q["ssim"],
                         "ssim_ort_int8": o["ssim"], "bicubic_psnr": fp["bicubic_psnr"]})
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
    print(f"digits ({digits['model']}, {digits['images']} test images): top-1 fp32 {digits['top1_fp32']:.2f}%")
    for label in ("int8", "ort_int8"):
        print(f"  {label:9s} top-1 {digits[f'top1_{label}']:.2f}%  changed predictions "
              f"{digits[f'changed_predictions_{label}']}  max |logit diff| {digits[f'max_abs_logit_diff_{label}']}")
    cfsr_dir = Path(args.cfsr_dir) if args.cfsr_dir else next(
        (d / "cfsr" for d in local_weight_dirs() if (d / "cfsr" / "CFSR_x2.pth").is_file()), None)
    rows = cfsr_rows(cfsr_dir) if cfsr_dir else []
    if rows:
        print(f"{'scale':>5}  {'photo':<22}{'PSNR fp32':>10}{'torch int8':>11}{'ORT int8':>10}{'SSIM fp32':>10}"
              f"{'torch int8':>11}{'ORT int8':>10}")
        for r in rows:
            print(f"{r['scale']:>5}  {r['photo']:<22}{r['psnr_fp32']:>10.2f}{r['psnr_int8']:>11.2f}{r['psnr_ort_int8']:>10.2f}"
                  f"{r['ssim_fp32']:>10.4f}{r['ssim_int8']:>11.4f}{r['ssim_ort_int8']:>10.4f}")
    else:
        print("CFSR weights not found: pass --cfsr-dir (skipped)")
    report = {"digits": digits, "cfsr": rows, "torch": torch.__version__}
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
