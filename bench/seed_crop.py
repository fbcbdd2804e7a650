"""The seed's crop step: lbpcascade_animeface on the equalized grey image, each detected
box saved as a PNG.

    python bench/seed_crop.py CASCADE IMAGE OUT_PREFIX [MIN_SIZE]
        one image per process, as the seed ran it under GNU parallel: OUT_PREFIX<k>.png
    python bench/seed_crop.py --batch CASCADE OUT_DIR MIN_SIZE "N<TAB>IMAGE"...
        many images per process (what a careful engineer runs under `parallel -n 25`):
        OUT_DIR/N-<k>.png, with OpenCV held to one thread (parallel runs one job per core)

Unreadable images print a message and are skipped, like the seed, which let parallel
carry on.
"""
import sys

import cv2


def crop(cascade, image_file: str, out_prefix: str, min_size: int) -> None:
    image = cv2.imread(image_file)
    if image is None:
        print(f"cannot read {image_file}", file=sys.stderr)
        return
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                     minSize=(min_size, min_size))
    for k, (x, y, w, h) in enumerate(faces):
        cv2.imwrite(f"{out_prefix}{k}.png", image[y:y + h, x:x + w])


def main() -> None:
    if sys.argv[1] == "--batch":
        cascade_file, out_dir, min_size = sys.argv[2:5]
        cv2.setNumThreads(1)
        cascade = cv2.CascadeClassifier(cascade_file)
        for item in sys.argv[5:]:
            number, image_file = item.split("\t", 1)
            crop(cascade, image_file, f"{out_dir}/{number}-", int(min_size))
        return
    cascade_file, image_file, out_prefix = sys.argv[1:4]
    min_size = int(sys.argv[4]) if len(sys.argv) > 4 else 250
    crop(cv2.CascadeClassifier(cascade_file), image_file, out_prefix, min_size)


if __name__ == "__main__":
    main()
