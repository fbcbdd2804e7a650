
import numpy as np
import pytest
from conftest import TESTDATA, normalize_files
from PIL import Image

from pipeline import normalize
from pipeline.imaging import load_rgb
from pipeline.manifest import read_manifest

ORIGINAL = TESTDATA / "anime_miku_noisy.jpg"  # 400 x 279, the source of most broken/ files


def run_normalize(tmp_path, files, **kw):
    return read_manifest(normalize_files(tmp_path, files, **kw))


def upright_original(size):
    return np.asarray(Image.open(ORIGINAL).convert("RGB").resize(size), dtype=np.float64)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_every_encoding_becomes_exact_square_rgb(tmp_path, fmt):
    files = [TESTDATA / "broken" / n for n in ("cmyk.jpg", "alpha.png", "gray16.png",
             "palette.gif", "exif_orient6.jpg", "lab_colorspace.tif")] + [ORIGINAL]
    rows = run_normalize(tmp_path, files, format=fmt, resolution=32)
    assert len(rows) == len(files) and all(r.kept for r in rows)
    for r in rows:
        with Image.open(r.path) as im:
            assert (im.format, im.mode, im.size) == ({"jpg": "JPEG", "png": "PNG"}[fmt], "RGB", (32, 32))
        assert normalize.validation_error(r.path, 32, fmt) == ""


@pytest.mark.parametrize("name,max_mean_abs_diff", [
    ("exif_orient6.jpg", 6),    # pixels stored rotated: EXIF Orientation=6 must be applied
    ("cmyk.jpg", 12),           # CMYK -> RGB stays close to the RGB original
    ("lab_colorspace.tif", 12),  # LAB -> sRGB through ImageCms
    ("palette.gif", 16),        # 256-colour palette: dithering error only
])
def test_conversions_preserve_the_picture(name, max_mean_abs_diff):
    im, _notes = load_rgb(TESTDATA / "broken" / name)
    assert im.mode == "RGB" and im.size == (400, 279)
    diff = np.abs(np.asarray(im, dtype=np.float64) - upright_original(im.size)).mean()
    assert diff < max_mean_abs_diff, diff


def test_sixteen_bit_gray_is_scaled_not_clipped():
    im, notes = load_rgb(TESTDATA / "broken" / "gray16.png")
    a = np.asarray(im)
    assert notes["mode"] == "I;16"
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()  # gray
    assert 40 < a.mean() < 215 and a.std() > 20  # a real picture, not all-white clipping


def test_pad_centres_on_background_and_crop_fills(tmp_path):
    # 400 x 279 -> 64: pad keeps the whole picture with black bars top and bottom
    pad, = run_normalize(tmp_path / "p", [ORIGINAL], fit="pad", format="png")
    a = np.asarray(Image.open(pad.path))
    bar = (64 - round(279 * 64 / 400)) // 2
    assert bar >= 9 and a[:bar - 1].max() == 0 and a[-(bar - 1):].max() == 0
    assert a[32].mean() > 30
    crop, = run_normalize(tmp_path / "c", [ORIGINAL], fit="crop", format="png")
    b = np.asarray(Image.open(crop.path))
    assert b[0].mean() > 30 and b[-1].mean() > 30  # no bars


def test_small_images_are_enlarged_to_exact_size(tmp_path):
    row, = run_normalize(tmp_path, [TESTDATA / "anime_miku_small.png"], resolution=512)
    assert Image.open(row.path).size == (512, 512)
    assert row.details["normalize"]["scale"] > 2


def test_enlarge_off_pads_small_images_at_their_own_size(tmp_path):
    """enlarge: false is ImageMagick's `-resize 512x512\\> -extent 512x512`: the 228 x 159
    picture sits unscaled in the middle of the black square; a larger one still shrinks."""
    small, big = run_normalize(tmp_path, [TESTDATA / "anime_miku_small.png", ORIGINAL],
                               resolution=256, format="png", enlarge=False)
    a = np.asarray(Image.open(small.path))
    original, _ = load_rgb(TESTDATA / "anime_miku_small.png")
    left, top = (256 - 228) // 2, (256 - 159) // 2
    assert np.array_equal(a[top:top + 159, left:left + 228], np.asarray(original))
    assert a[:top].max() == 0 and a[top + 159:].max() == 0
    assert small.details["normalize"]["scale"] == 1.0
    assert big.details["normalize"]["scale"] == round(256 / 400, 6)


def test_validator_refuses_anything_else(tmp_path):
    Image.new("RGB", (64, 63)).save(tmp_path / "a.jpg")
    Image.new("L", (64, 64)).save(tmp_path / "b.jpg")
    Image.new("RGB", (64, 64)).save(tmp_path / "c.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.jpg")
    assert "size" in normalize.validation_error(tmp_path / "a.jpg", 64, "jpg")
    assert "mode" in normalize.validation_error(tmp_path / "b.jpg", 64, "jpg")
    assert "format" in normalize.validation_error(tmp_path / "c.png", 64, "jpg")
    assert normalize.validation_error(tmp_path / "ok.jpg", 64, "jpg") == ""
    with pytest.raises(SystemExit) as e:
        normalize.main(["validate", "--resolution", "64", "--format", "jpg",
                        str(tmp_path / "ok.jpg"), str(tmp_path / "a.jpg")])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        normalize.main(["validate", "--resolution", "64", "--format", "jpg", str(tmp_path / "ok.jpg")])
    assert e.value.code == 0


def test_output_is_deterministic(tmp_path):
    files = [ORIGINAL, TESTDATA / "broken" / "cmyk.jpg"]
    a = run_normalize(tmp_path / "a", files)
    b = run_normalize(tmp_path / "b", files)
    for x, y in zip(a, b):
        assert open(x.path, "rb").read() == open(y.path, "rb").read()


def test_in_memory_validation_refuses_what_the_file_check_refuses():
    """normalize validates the image it holds and the bytes it encoded (no re-decode);
    the checks refuse the same things validation_error refuses on a file."""
    ok = Image.open(ORIGINAL).convert("RGB").resize((64, 64))
    assert normalize.image_error(ok, 64) == ""
    assert "size" in normalize.image_error(ok.resize((64, 63)), 64)
    assert "mode" in normalize.image_error(ok.convert("L"), 64)
    jpg, png = normalize.encode_bytes(ok, "jpg", 95), normalize.encode_bytes(ok, "png", 95)
    assert normalize.header_error(jpg, 64, "jpg") == "" and normalize.header_error(png, 64, "png") == ""
    assert "format" in normalize.header_error(png, 64, "jpg")
    assert "size" in normalize.header_error(jpg, 32, "jpg")
    assert "unreadable" in normalize.header_error(b"", 64, "jpg")
    assert "unreadable" in normalize.header_error(jpg[:10], 64, "jpg")


def test_written_files_are_the_encoded_bytes(tmp_path):
    """What normalize writes decodes fully and equals encoding the fitted image directly."""
    for fmt in ("jpg", "png"):
        row, = run_normalize(tmp_path / fmt, [ORIGINAL], format=fmt, resolution=64)
        assert normalize.validation_error(row.path, 64, fmt) == ""
        im, _ = load_rgb(ORIGINAL)
        square, _ = normalize.fit_square(im, 64, "pad")
        assert open(row.path, "rb").read() == normalize.encode_bytes(square, fmt, 95)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_png_encoder_is_lossless_for_every_mode(mode):
    """imaging.png_bytes (OpenCV, Up filter) gives back exactly the pixels and mode PIL holds."""
    from io import BytesIO

    from pipeline.imaging import png_bytes
    im, _ = load_rgb(TESTDATA / "anime_miku_small.png")
    im = im.convert("RGBA") if mode == "RGBA" else im.convert(mode)
    if mode == "RGBA":  # a real alpha ramp, not an opaque channel
        im.putalpha(Image.linear_gradient("L").resize(im.size))
    data = png_bytes(im)
    assert data == png_bytes(im)  # deterministic
    with Image.open(BytesIO(data)) as back:
        assert back.format == "PNG" and back.mode == im.mode and back.size == im.size
        assert np.array_equal(np.asarray(back), np.asarray(im))
