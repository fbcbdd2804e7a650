"""The seed's crop step, one image per process (as it ran under GNU parallel):
lbpcascade_animeface on the equalized grey image, each detected box saved as a PNG.

    python bench/seed_crop.py CASCADE IMAGE OUT_PREFIX [MIN_SIZE]

Writes OUT_PREFIX<k>.png for the k-th face. Unreadable images print a message and exit 0,
like the seed, which let parallel carry on.
"""
import sys

import cv2


def main() -> None:
    cascade_file, image_file, out_prefix = sys.argv[1:4]
    min_size = int(sys.argv[4]) if len(sys.argv) > 4 else 250
    cascade = cv2.CascadeClassifier(cascade_file)
    image = cv2.imread(image_file)
    if image is None:
        print(f"cannot read {image_file}", file=sys.stderr)
        return
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                     minSize=(min_size, min_size))
    for k, (x, y, w, h) in enumerate(faces):
        cv2.imwrite(f"{out_prefix}{k}.png", image[y:y + h, x:x + w])


if __name__ == "__main__":
    main()
