"""Image sizes read from the file header."""


def test_image_size_follows_exif_rotation(tmp_path):
    from PIL import Image

    from mutual_guide.data.image_header import read_image_size

    exif = Image.Exif()
    exif[274] = 6  # rotated 90 degrees: detectron2's read_image returns it 40 wide, 30 high
    Image.new("RGB", (30, 40)).save(tmp_path / "rotated.jpg", exif=exif)
    Image.new("RGB", (30, 40)).save(tmp_path / "plain.jpg")
    assert read_image_size(str(tmp_path / "rotated.jpg")) == (40, 30)
    assert read_image_size(str(tmp_path / "plain.jpg")) == (30, 40)
    from detectron2.data.detection_utils import read_image

    assert read_image(str(tmp_path / "rotated.jpg")).shape[:2] == (30, 40)
