"""Data root and the registry of downloadable files: list, download, verify, unpack.

    python -m common.data list
    python -m common.data download wine dicom-ct
    python -m common.data download luna-subset0 --data-dir /big/disk/dlwpt

Files land under the data root (`--data-dir` > `$DLWPT_DATA` > `data/`) in the book repository's
layout. `$DLWPT_MIRROR` (a folder or a base URL) replaces the book repository as the source of
the book's files. Each file is written to `<dest>.part` (resumed with an HTTP Range request after
an interruption), checked against its size and checksum, then renamed into place.
"""
import argparse
import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter, namedtuple
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from common.errors import DataError, run_cli

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOK_BASE_URL = "https://github.com/deep-learning-with-pytorch/dlwpt-code/raw/master/data/"
MIRROR_ENV = "DLWPT_MIRROR"
TIMEOUT_S = 60                      # a connection silent this long counts as dropped
ATTEMPTS = 5                        # resumes within one command, while each one makes progress
CHUNK = 1 << 20                     # bytes per read
USER_AGENT = "dlwpt-functional/0.1 (python urllib)"
VERIFIED_MARK = ".dlwpt-verified"   # written into a folder unpacked from a verified archive
BIG_FILE = 256 << 20                # checksumming a file this large shows a progress bar

# One downloadable file. url None: a book file, fetched from $DLWPT_MIRROR or from
# BOOK_BASE_URL + relpath. sha256 may be a prefix (torchvision names its weight files after the
# first 8 hex digits of their sha256). size / sha256 / md5 None: not known, never guessed.
FileSpec = namedtuple("FileSpec", "relpath url size sha256 md5")
# A registry name: its files, and for an archive (a single file) the folder it unpacks into.
Entry = namedtuple("Entry", "name about files extract_to")


def data_root(data_dir=None):
    """`--data-dir` > `$DLWPT_DATA` > `data/` in the repository."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("DLWPT_DATA")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def add_data_dir_argument(parser):
    """The `--data-dir` flag every script shares."""
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: $DLWPT_DATA, else data/ in the repository)")


def book_file(relpath, data_dir=None, name=None):
    """Path of a file under the data root; a missing one is a DataError naming the download."""
    path = data_root(data_dir) / relpath
    if not path.exists():
        hint = (f"; get it with:  python -m common.data download {name}" if name
                else "")
        raise DataError(f"{path} not found{hint}")
    return path


ABOUT = {
    "p1ch2": "ch2: bobby.jpg, horse.jpg, ImageNet class names, MNIST net",
    "horse2zebra": "ch2: CycleGAN horse->zebra generator weights",
    "resnet101": "ch2: torchvision ResNet-101 ImageNet weights",
    "p1ch3": "ch3: serialized tensors (torch and HDF5)",
    "image-dog": "ch4: one JPEG image",
    "image-cats": "ch4: a folder of three PNG images",
    "dicom-ct": "ch4: a 99-slice chest CT (DICOM)",
    "wine": "ch4: wine quality table (CSV)",
    "bikes": "ch4: bike sharing time series (CSV)",
    "jane-austen": "ch4: Pride and Prejudice (text)",
    "audio-chirp": "ch4: an audio clip (WAV)",
    "video-cockatoo": "ch4: a video clip (MP4)",
    "cifar10": "ch7-8: CIFAR-10, python pickles (unpacked)",
    "birds-vs-airplanes": "ch8: the book's trained birds-vs-airplanes Net",
    "cls-val-example": "ch15: a LUNA validation crop for the servers",
    "luna-csv": "ch10-14: the book's LUNA candidates/annotations CSVs",
    "luna-models": "ch11-14: the book's trained classifier and U-Net checkpoints",
    "luna-annotations": "ch10: LUNA16's own annotations.csv and candidates.csv",
    "luna-subset": "ch10: LUNA16 CT scans, subset {i} (unpacked)",
}

# The book repository's files: name -> (folder under the data root, ((file, size, sha256), ...)).
# Sizes (bytes) and sha256 computed from a copy of the repository's data/ folder; None where the
# file was not in that copy (candidates.csv, horse2zebra): no checksum is known for those.
BOOK_FILES = {
    "p1ch2": ("p1ch2", (
        ("bobby.jpg", 75801, "71d4d4ae4f00f5febb1f178153673bc456d15f305f6d58517679340dcfbf5914"),
        ("horse.jpg", 385347, "478b2b255c74ad18547b6df158a08703d7c5961e89a5c46f2685f820122fff66"),
        ("imagenet_classes.txt", 21674, "a40d9be82eb4738becd1dd69991b89f87f309975e860a6f3f45395d8c06a7e0d"),  # noqa: E501
        ("mnist/mnist.pth", 88668, "afaf61b6023c2fa5b293597947939d54019744a6dc2b102f3b13dc7b6e3eb35a"),  # noqa: E501
    )),
    "horse2zebra": ("p1ch2", (
        ("horse2zebra_0.4.0.pth", None, None),
    )),
    "p1ch3": ("p1ch3", (
        ("ourpoints.t", 387, "12d47afb6dea9953d0314076bd81744e24f31b407d944d898fdca452f94b3568"),
        ("ourpoints.hdf5", 2096, "2409bab2edaf26e02aaa4c5048da2980bdfbe4efaf8819c1c8eedad1c940debb"),  # noqa: E501
    )),
    "image-dog": ("p1ch4/image-dog", (
        ("bobby.jpg", 75801, "71d4d4ae4f00f5febb1f178153673bc456d15f305f6d58517679340dcfbf5914"),
    )),
    "image-cats": ("p1ch4/image-cats", (
        ("cat1.png", 142028, "e87d082c3d9465126a0e66f95b0111be8d300223c24a7590604e622cba662699"),
        ("cat2.png", 144059, "5fe15f80c49c9ecb7c72dcdc276d43a04c0559dc9bf62d5de17c72c5b777283f"),
        ("cat3.png", 106468, "903322dcc2bb2930013d58cd39c6ae6f55c5b1b640ef3129b30c0000c6858c93"),
    )),
    "dicom-ct": ("p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083", (
        ("000000.dcm", 527874, "96df6b937d5341914d2f0ee9d03c5254040b02158a437e7967f40e0f71353c7c"),
        ("000001.dcm", 527874, "95d669ebaeb2cc0046beda427b073df266ee67e6063d28e325f8ef5168ba7eed"),
        ("000002.dcm", 527874, "c72e114ec7ea56c8bf3613a3b7da7cf7d2eff199892ad2f86b40f9afa6544044"),
        ("000003.dcm", 527874, "a40f256e9d497433871d0bc30deebe89cb176d733dbc72e0ebf8a826106b4555"),
        ("000004.dcm", 527874, "e503c0401675f487ce0884805ee31e560acf1a7db2c8fb3fc22f6b36ff8d915d"),
        ("000005.dcm", 527874, "be27f8703e57d69e40b42ee8de2c79adc704223851a133518e17d8e6328e6c8f"),
        ("000006.dcm", 527874, "5f2c9b86c6bf8bb0f82413cb6338c5afc4237e1f7236fd24ae7ef0ea20bfc052"),
        ("000007.dcm", 527870, "6177705888d63bf7ba244572eb707a11e2b72e2a3a73a06dc1e047327da4d0ad"),
        ("000008.dcm", 527874, "2d520b9df906a9748c446b186429995b13293b91ba8e24c80862403b05682b6a"),
        ("000009.dcm", 527870, "49924e185c1d046e91b10f34797ab35ea8ed6551957f42491a684a1cf0643289"),
        ("000010.dcm", 527870, "d97e2fc137ada408cd056cdb1237b81289e2761f25fe568cc3b8b53f324480da"),
        ("000011.dcm", 527870, "2d0b4a7148f5822a28c54b062885b01e5129e1bd2e353cfc4348d462ca1252e4"),
        ("000012.dcm", 527870, "e779b592fee845f8e1022880749dc567f15a81764a9a40e2977ef1eca0008f34"),
        ("000013.dcm", 527874, "b4ff943717c2b68a43ed0d2398717c8e6ceaf49ed4c777e48a34379baf98456e"),
        ("000014.dcm", 527874, "e11b57228f72ad437b1bc784abd1858b17c8d2b536b2d23730315ae6b9e1fc96"),
        ("000015.dcm", 527874, "425b570a63874b371f2927abdbf05467047206fa140f01144a7c00c651997418"),
        ("000016.dcm", 527874, "5997a21f356b50cd5ef2bcbcf5da28da1d75d59b1428a2501ae176029efe277b"),
        ("000017.dcm", 527874, "08b73f34742945718dee0ab0a0d727e7f000b9f25aa68bf6eae442be6011f65e"),
        ("000018.dcm", 527874, "5a46e73d2a7eda25eb2e0f5c8b397eeaabe154c4e128555ef088a43461c9b7a3"),
        ("000019.dcm", 527870, "8e27145853abe006d7e9df61a0c336af80b58dc4dba142067adf9dc151775344"),
        ("000020.dcm", 527874, "cef8678a1e5c14fba1f53a341e7b1e85d6da9452b9430bc52185de09c66dfd01"),
        ("000021.dcm", 527874, "1a5a746b743df5964f8dd1c57f37a06adb08baa6c83c31aed01916c276b382ab"),
        ("000022.dcm", 527874, "f367d68723f423e1b729d2bfaa8f9e2f74fb4f2f59e0e033899b3806c2b92adf"),
        ("000023.dcm", 527874, "afd14feffcf9e319d239429f15c8fec2d588757fed3d7682be7f1e8fd4125cc6"),
        ("000024.dcm", 527874, "463d88a977848e83332b921d6864eaeecb1f903eb91423f01bde5fbe7f1acb73"),
        ("000025.dcm", 527874, "6377dc15ced01519ee3f876a0a21e92cf37723edb6303e68445455ee63dec56c"),
        ("000026.dcm", 527874, "539cae7740add1c277e253db000db301d9c41cd798312ac4d9f737d13e5dc98a"),
        ("000027.dcm", 527874, "539e4c491f716a6c607a214da0fd9233f1b56a875a03154f66aa2c6521994a95"),
        ("000028.dcm", 527874, "3ee1c6eabdeaf10f026afda255ae155c5f562409799ec5664ce7e969abba0046"),
        ("000029.dcm", 527874, "2721f3ba130dbaf0ca631b2ebe9811f884b301b7ecaebdb6be725c38b3644c42"),
        ("000030.dcm", 527874, "11d22a0e3bbc4ede5a725f0d3ab51b5f794d10fdad530190983168dc03304043"),
        ("000031.dcm", 527928, "e8d0e3f4608599e19076c459c2eef2588ba0f14d7aa786ce6bf005f4033b2967"),
        ("000032.dcm", 527932, "b7a0b74fb88f93aa82e337e5bdcee188f0eb3a11546d80c644eecf1cba23743d"),
        ("000033.dcm", 527874, "a06e8595345c071f4dd71a661dfa703c44de410db824c7043003fd2a5bdbdcfa"),
        ("000034.dcm", 527874, "7fda5d35628bade89f1249334c8148beaf88464a1a1c4084f12c861cfa12e0f1"),
        ("000035.dcm", 527874, "17e2287cb97e8759f913cbdc1e8bfe48c921f0f97d6c9252667776edfeda6b49"),
        ("000036.dcm", 527870, "38437911617eeaa5283b8a8c31b750cb2464e0f2874d5b10f52d821d68c12ad6"),
        ("000037.dcm", 527874, "ed2ca9397cf1643ee13f9f18f92b52c9339895c746d5eb2176031f0ab1b73b50"),
        ("000038.dcm", 527874, "c6943c288cff4a207352157827d5a8c7d70d2dcb9e3d5874947beeba9c04ba58"),
        ("000039.dcm", 527870, "74112315c9804a45ce09f0d382a9ed3712e892dedc9312dbd73284dbcb58600e"),
        ("000040.dcm", 527874, "b25d95de359260aa5d219cf1e64be845d51d4c63fd8629220e4ac2dbee3a57aa"),
        ("000041.dcm", 527874, "2410ea3e0579b6666a8cd887946966f93421763a33462236f6797d0ed05932a7"),
        ("000042.dcm", 527874, "4edbec834b2b6ad857ce2e1501f50657e32b1868d29fc8cd72e21bf53032ea28"),
        ("000043.dcm", 527874, "da6f00887cdb6725cae973ef91c7002e3806548f70f75d3b917a690607038b7c"),
        ("000044.dcm", 527874, "645e6939162269039257c6cb8101997ffbea948590f3095bdb1df2d669a35973"),
        ("000045.dcm", 527870, "9f26ad11aefb8776f1ea8b3f623ca459eb602c2a372d331921e66f4682719bbc"),
        ("000046.dcm", 527874, "2839f7b2a24ec862caf8ead6984f0e95e487282070d428be4edb61c9fc504514"),
        ("000047.dcm", 527870, "301706849187e6e72639aa938c0bcd4fbb16f4e2d13802a53df737f6a19596e2"),
        ("000048.dcm", 527870, "2b0e8b773b75d73d959d3715e0306c2059bc0c39a9f9b8ecb2aa872b61efa490"),
        ("000049.dcm", 527874, "b8caf681aa34131b7591dbd768b8d28f844b648e2ed450cbf300c8d04c5f86e4"),
        ("000050.dcm", 527874, "789d4128498951955d03d4a930cf80be5f269a8913b6ab063f8deafbacc5205e"),
        ("000051.dcm", 527874, "d9720a31daa572c0add62699d56b6fa9cf4dd7589ad2c046b6939170e5f5cfb3"),
        ("000052.dcm", 527870, "095acb383920af19dedee28ed907bfbc1562d4b0b56f867b8bb5e574ea7d39d0"),
        ("000053.dcm", 527874, "dbe18834f85fe751f4fc60fd88e7405a116bcb7dcd2e7be108e31cfb49840b77"),
        ("000054.dcm", 527874, "4b36a011f08895af9aaac42283549f59f0d2eef8c3052fe0687c28ae8e28274d"),
        ("000055.dcm", 527874, "675e9b656746319765a91a884ab303979eff3046011b6e8aa7657e240de6aa38"),
        ("000056.dcm", 527874, "cae1f80e8fbbecc04f3fb84c3d66323f1234824d8b66ff73db4b8047e5261bc8"),
        ("000057.dcm", 527874, "a993682dadac7506874ba155adbd1c4dc2ddc254f5e1b6628de31d1eb6a06199"),
        ("000058.dcm", 527874, "0fcf0f032d7a36c2245d63a9f18d853fdb3e68d12338333d0225ba0cb9caa96c"),
        ("000059.dcm", 527874, "557daff89ca7c959ca84180b5989fbbcac3c2949a8dc8c3a7ea11f90af9ecc9e"),
        ("000060.dcm", 527874, "bf1df11312c99e36610d93c0ab364311f3d502a21526a7d2c0e3c276af5e6ff6"),
        ("000061.dcm", 527874, "46012a6433b256db366f6c35415e1430d97ec5be055e5512dc49452661d9691c"),
        ("000062.dcm", 527874, "988cc901cded15d1ea7221e45bffc4c0d42b0f8ef6cf8d48f5109c60b04dfa28"),
        ("000063.dcm", 527874, "682591c2d39a7a2b876e79098bbbf16b07edbf6f4e066ceb6880f1e81f8ff92c"),
        ("000064.dcm", 527874, "f929f192bccb0da6a61d1713afb0568da5ade7c181c0e30a4248b9c888f2b005"),
        ("000065.dcm", 527874, "746b480bac99151477a27d430eff4552b7a253d6231774c2e75626a3f281d64e"),
        ("000066.dcm", 527874, "f2018860140546e37b05c535cf66cfe90b6fa8cd3cea82db498d0bec91a6bfc5"),
        ("000067.dcm", 527874, "3933440fcf21ffaccfd454010f459b9f0fa65352f877ca228aed2fff7759f8de"),
        ("000068.dcm", 527874, "4a0313d959e6c483bac92b0821e1f92dfd6a9fdf5a98ca6113f6b9d62903a73f"),
        ("000069.dcm", 527874, "bb2147ee9c3911a72fad6b60e647cc4591bcc7bd015dd9ff05dbfd826cb58c93"),
        ("000070.dcm", 527874, "c0a793e21e5ec4e51dc1c49f3d327144e0f848d05392098ca3eb2141d1e842d7"),
        ("000071.dcm", 527874, "08728f6fec35506547e49b29b4bc07fc9c4f301e03d778c9d99d1d28945c4536"),
        ("000072.dcm", 527874, "5a3bf939e81165630375fb9d76449e2660a99b206ff9c5be12997755c2da6721"),
        ("000073.dcm", 527874, "b1015c4228f29ee65bb3ad66ec2157d04c62c73b9606cbc9979b3e51020c6f7b"),
        ("000074.dcm", 527874, "a357a019e76862d94bcd28c22a87883dfcc01e229fef851f5c69f5723a376115"),
        ("000075.dcm", 527874, "872d080b6a6e5f09905a78a1b1d73e624f1933a199b8129a6ac19daaa3944e7d"),
        ("000076.dcm", 527870, "0448089219939f43c25035e1b905ee330a13f14d5de0fc734587a6badc509f99"),
        ("000077.dcm", 527874, "758b54359e13f5015f7091824c94886a334a53a7c4a7893b2aaaac05763b8007"),
        ("000078.dcm", 527874, "4fff4a45f42c43cb274cad0b6c39d1a38df98548538518443d95da42eadf145c"),
        ("000079.dcm", 527874, "192e35902ea9a712b28ccc0e73527bd521f0645f1773ca927dab91f9e6898991"),
        ("000080.dcm", 527874, "bd22b076cc0816d180c6d9a037d78362c19fed8e865cbd1b3e97fd7a1704fb7e"),
        ("000081.dcm", 527870, "27b544a56f8cfd19f3a4974f8dd16589a367d1e07b87d75431724227e73d78ba"),
        ("000082.dcm", 527874, "408e52daff4dea90db8f7b4da3a22815afa7c0dacf5cac985b151ad1b912e16b"),
        ("000083.dcm", 527870, "d490ace84bff39ab677fb0ca0c3312dbf676f3f8cad8a98c01f93d33b0734183"),
        ("000084.dcm", 527874, "bf3a1ec98acdb73589b3f9459fcad0f4882aac671dfdef0b74465faab481ffa7"),
        ("000085.dcm", 527874, "7bc8ce2043db2abbd128b38362a046128b4c8c8567abdf6025eb583b080f3f66"),
        ("000086.dcm", 527874, "1c548794266fa26e19cdb002f2678543f9fad8827b6a9cf1ca309e438f8e6e36"),
        ("000087.dcm", 527874, "83d96dfba5d04c8a5be3b68a6bf7712ad328691fc13f6ef91956fbf25a0b0df9"),
        ("000088.dcm", 527932, "204a38ae99c8b4003a621da2481945c38353bd58350767867da157a12a493cca"),
        ("000089.dcm", 527874, "74747d2b8ebcda9eb95290cc47b280d945a20cadc0035dbe1ef47a27ebdf7480"),
        ("000090.dcm", 527874, "271fd4df5dee83e88808a3caa779445659ee09521fda7d2b51e5a80dd458ef59"),
        ("000091.dcm", 527874, "375cb3cd21e90e8b8b914d3150fe6dea5ec00f84b727b250398f0da7601074a8"),
        ("000092.dcm", 527874, "09a021e606eab0ee03e1de0a6491372fb0d444b3e90d2ddefb557d49518888e8"),
        ("000093.dcm", 527874, "bb93076994c5bb4f4a2fb8c19f22244bfd49038f68f1c55eae6c445935d98947"),
        ("000094.dcm", 527874, "92e188cf8b7b8579df2e65d3bbc0088190da44d3cc091f37fa713a92fe281fea"),
        ("000095.dcm", 527932, "f2ab4dd411a362702e1b46c994a3ddd1208aac56fc1fa0f26cd53951e352d833"),
        ("000096.dcm", 527874, "aa022de57173c3b786d62f57769433ae1426f114af1b82956d824b3ee4c304fb"),
        ("000097.dcm", 527874, "254cb5a97f321ef91832e37c954650ae179c2f61b67fb9ee2049b075d5492d17"),
        ("000098.dcm", 527874, "77a2ce0137b78368ea54b405b1a8feb90ffca64dd0b99017c88e05164cd10cbe"),
    )),
    "wine": ("p1ch4/tabular-wine", (
        ("winequality-white.csv", 264426, "76c3f809815c17c07212622f776311faeb31e87610d52c26d87d6e361b169836"),  # noqa: E501
    )),
    "bikes": ("p1ch4/bike-sharing-dataset", (
        ("Readme.txt", 5496, "6f5ca84b8e9495c6c1f4ce48c31a99f96bba9d952c7f694cbbce3cd82332d471"),
        ("day.csv", 56837, "537e98e2c8b8f53e3094d953f847788b1dc224764a4a1e538b3e1ec4e30dac8a"),
        ("fix_missing_hours.py", 1152, "c17818cf026791c357f0dbabf6496585c4724e74515e999a230bc336d5e7c55e"),  # noqa: E501
        ("hour-fixed.csv", 1148001, "ae5b1b828676fb7696ebfd838f105c71cda9c867aa752f75eed6fa6d0eacf991"),  # noqa: E501
        ("hour.csv", 1139356, "b03a2d02e8c10f435c43c7f0b358b7e34a003afea53dbc37f0183f2763295133"),
    )),
    "jane-austen": ("p1ch4/jane-austen", (
        ("1342-0.txt", 711298, "c96e628c6f84bf45d3cee2c2da66166ccbeda328ecb76bb9b2ab1bc91961d0d1"),
    )),
    "audio-chirp": ("p1ch4/audio-chirp", (
        ("1-100038-A-14.wav", 441044, "2faa39d8e59e8f292dfbdbe72bd8a00294f9535714b3c19b39904c2c17e14675"),  # noqa: E501
    )),
    "video-cockatoo": ("p1ch4/video-cockatoo", (
        ("cockatoo.mp4", 728751, "5fde35f5a288ca86e216d2dc28188ab64b4560d3021f273faefdf0de80f38aa5"),  # noqa: E501
    )),
    "birds-vs-airplanes": ("p1ch6", (
        ("birds_vs_airplanes.pt", 73643, "82bbc255589220d8d9e37981be4149707ed9b7dab44ad045e2a8357475dd1eae"),  # noqa: E501
    )),
    "cls-val-example": ("p3ch15", (
        ("cls_val_example.pt", 295541, "8da92aea0dda53086e431f5885539e32f94c697cabe4a455f834294f04648225"),  # noqa: E501
    )),
    "luna-csv": ("part2/luna", (
        ("annotations.csv", 135799, "5ac2d735e7717b0ad508f3c760817a5c1b2fba1dee3a37b2d1974b41c8d11747"),  # noqa: E501
        ("annotations_with_malignancy.csv", 268015, "d29a49d0a72aecfacbcce91587691005f19dfb361708e72111e58d944f36ee2a"),  # noqa: E501
        ("candidates.csv", None, None),
    )),
    "luna-models": ("part2/models", (
        ("alternate_cls_2019-06-16_14.18.58_ch12-other-model.best.state", 901314, "d0d2ffd96b8f6dc0f3c0b2b8ac76316083e3a006a143dd0bb23e9fb32d2974d2"),  # noqa: E501
        ("cls_2019-06-23_14.57.45_redo.best.state", 1776153, "5d0fb82eb18d6a3621251ba8b59919a0d5c3515bbc2444ed4c2b87d0f7fe423f"),  # noqa: E501
        ("cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state", 893393, "0f2af10e3bb0f5159cb6ea0df97a2d9f4ac824e28d18a3f18746f39de5bb0727"),  # noqa: E501
        ("seg_2019-06-22_22.55.11_ch12-no-aug-bn-all-metrics-more-samples.750000.state", 1009424, "014fe6cef028d00999e731134161dc6ccd307acbfd9faacc37ba3f46e29bb10c"),  # noqa: E501
        ("seg_2020-01-26_19.45.12_w4d3c1-bal_1_nodupe-label_pos-d1_fn8-adam.best.state", 1451636, "cb3291697a78d99d347054d9236f43e6acd79646861864b03fc109af38ba88fb"),  # noqa: E501
    )),
}

CIFAR10 = FileSpec("cifar-10-python.tar.gz",
                   "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                   170_498_071, None, "c58f30108f718f92721af3b95e74349a")  # md5: the CIFAR page
RESNET101 = FileSpec("weights/resnet101-63fe2227.pth",
                     "https://download.pytorch.org/models/resnet101-63fe2227.pth",
                     None, "63fe2227", None)        # torchvision: sha256 starts with 63fe2227

# LUNA16 on Zenodo: part 1/2 (record 3723295) holds subsets 0-6 and the CSVs, part 2/2 (record
# 4121926) subsets 7-9. Size and md5 as Zenodo lists them for each file.
ZENODO_URL = "https://zenodo.org/records/{record}/files/{name}?download=1"
LUNA_SUBSETS = {  # subset: (record, size in bytes, md5)
    0: (3723295, 6_811_924_508, "1065b0f42b8c25cf29260fd924a3c3a2"),
    1: (3723295, 6_334_778_552, "2eda28bb123543074f5cd849499b87ff"),
    2: (3723295, 7_257_937_108, "685b484b085bcdb81c525f3b1bf97c51"),
    3: (3723295, 6_896_620_114, "54707e9e8954af29326eed60f38ea321"),
    4: (3723295, 6_856_144_330, "98225ccb1a41fc434631f63f4284796a"),
    5: (3723295, 6_610_460_097, "395ec714c4123cf213fb7b08f05ee9cc"),
    6: (3723295, 6_531_050_274, "d162df1444a6f2674ab8273c7f9e1520"),
    7: (4121926, 6_313_598_213, "e99b8921990d1414bb5e92130371e8a3"),
    8: (4121926, 6_025_767_505, "38260ca9a8741888997bcebedfabc3f1"),
    9: (4121926, 6_699_650_017, "e55c473bbeebd712eb2224a58998be8e"),
}
# LUNA's own CSVs, saved under luna/ (the book's copies are in part2/luna/): (file, size, md5).
LUNA_CSVS = (
    ("annotations.csv", 136_986, "f4404df491aee6445a4485061bfdffdd"),
    ("candidates.csv", None, None),
)


def registry():
    """Every downloadable name -> Entry: the book's files, then other sources (built on call)."""
    entries = {name: Entry(name, ABOUT[name], tuple(
        FileSpec(f"{folder}/{file}", None, size, sha256, None) for file, size, sha256 in files),
        None) for name, (folder, files) in BOOK_FILES.items()}
    entries["resnet101"] = Entry("resnet101", ABOUT["resnet101"], (RESNET101,), None)
    entries["cifar10"] = Entry("cifar10", ABOUT["cifar10"], (CIFAR10,), "cifar-10-batches-py")
    entries["luna-annotations"] = Entry("luna-annotations", ABOUT["luna-annotations"], tuple(
        FileSpec(f"luna/{file}", ZENODO_URL.format(record=3723295, name=file), size, None, md5)
        for file, size, md5 in LUNA_CSVS), None)
    for i, (record, size, md5) in LUNA_SUBSETS.items():
        url = ZENODO_URL.format(record=record, name=f"subset{i}.zip")
        entries[f"luna-subset{i}"] = Entry(f"luna-subset{i}", ABOUT["luna-subset"].format(i=i), (
            FileSpec(f"luna/subset{i}.zip", url, size, None, md5),), f"luna/subset{i}")
    return entries


def human_size(n):
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def digests(path, md5=False):
    """(sha256, md5 or None) hex digests of a file, read in chunks."""
    sha = hashlib.sha256()
    other = hashlib.md5(usedforsecurity=False) if md5 else None
    size = path.stat().st_size
    with open(path, "rb") as f, _progress(f"checksum {path.name}", size, 0,
                                          disable=size < BIG_FILE) as bar:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            if other:
                other.update(chunk)
            bar.update(len(chunk))
    return sha.hexdigest(), other.hexdigest() if other else None


def verify(spec, path):
    """(True | False | None, sha256 or None, why): None when there is no checksum to check."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return False, None, f"size {size} bytes, expected {spec.size}"
    sha256, md5 = digests(path, md5=spec.md5 is not None)
    if spec.sha256 and not sha256.startswith(spec.sha256):
        return False, sha256, f"sha256 {sha256[:16]}..., expected {spec.sha256[:16]}..."
    if spec.md5 and md5 != spec.md5:
        return False, sha256, f"md5 {md5}, expected {spec.md5}"
    if not (spec.sha256 or spec.md5):
        return None, sha256, "no published checksum"
    return True, sha256, ""


def source(spec, mirror=None):
    """A URL, or a Path in a mirror folder: the file's own URL, else the mirror or the book repo."""
    if spec.url:
        return spec.url
    quoted = urllib.parse.quote(spec.relpath)          # the DICOM folder holds spaces
    if not mirror:
        return BOOK_BASE_URL + quoted
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + quoted
    return Path(mirror).expanduser() / spec.relpath


def _size(path):
    return path.stat().st_size if path.exists() else 0


def _progress(name, total, initial, disable=False):
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True,
                unit_divisor=1024, leave=False, dynamic_ncols=True, disable=disable)


def _fetch_once(url, part, size, timeout):
    """Append the rest of `url` to `part`; None when complete, else why the transfer stopped."""
    have = _size(part)
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return None
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:                     # nothing past the end: the .part is whole
            return None
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        return f"{getattr(e, 'reason', None) or e}"
    with response:
        if have:
            content_range = response.headers.get("Content-Range", "")
            if getattr(response, "status", None) != 206 or not content_range:
                tqdm.write(f"{part.name}: the server ignored the resume request; starting over")
                have = 0
            elif not content_range.startswith(f"bytes {have}-"):
                raise DataError(f"{url}: the server resumed at {content_range!r}, not byte {have};"
                                f" delete {part} and run the command again")
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else size
        try:
            with open(part, "ab" if have else "wb") as f, \
                    _progress(part.name, expected, have) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:   # reset, timeout, IncompleteRead
            return f"{type(e).__name__}: {e}"
    if expected is not None and _size(part) < expected:
        return f"connection closed after {_size(part)} of {expected} bytes"
    return None


def fetch(url, part, size=None, timeout=TIMEOUT_S):
    """Download `url` into `part`, resuming what is there; retries while each try makes progress."""
    for attempt in range(1, ATTEMPTS + 1):
        before = _size(part)
        why = _fetch_once(url, part, size, timeout)
        if why is None:
            return part
        if _size(part) <= before or attempt == ATTEMPTS:
            kept = (f"; {_size(part)} bytes kept in {part}: run the same command again to resume"
                    if _size(part) else "")
            raise DataError(f"{url}: {why}{kept}")
        tqdm.write(f"{part.name}: {why}; resuming at byte {_size(part)}")


def copy_local(src, part):
    """Copy a file from a mirror folder into `part`, resuming what is there."""
    if not src.is_file():
        raise DataError(f"{src} not found in the mirror folder (${MIRROR_ENV})")
    total, have = src.stat().st_size, _size(part)
    if have > total:
        have = 0
    with open(src, "rb") as fin, open(part, "ab" if have else "wb") as fout, \
            _progress(part.name, total, have) as bar:
        fin.seek(have)
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            bar.update(len(chunk))
    return part


def get_file(spec, root, mirror=None, timeout=TIMEOUT_S):
    """Make root/relpath a verified copy of the file; returns what happened, in words."""
    dest = root / spec.relpath
    if dest.exists():
        ok, _, why = verify(spec, dest)
        if ok:
            return "already present and verified"
        if ok is None:
            return "already present, no checksum to verify"
        tqdm.write(f"{spec.relpath}: present but {why}; downloading it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    src = source(spec, mirror)
    if isinstance(src, Path):
        copy_local(src, part)
    else:
        fetch(src, part, spec.size, timeout)
    ok, sha256, why = verify(spec, part)
    if ok is False:
        part.unlink()
        raise DataError(f"{spec.relpath}: checksum failed ({why}); deleted the partial file {part}")
    os.replace(part, dest)
    if ok is None:
        print(f"{spec.relpath}: could not be verified (no published checksum); "
              f"got {_size(dest)} bytes, sha256 {sha256}")
        return "downloaded, not verified"
    return "downloaded and verified"


def _member_path(staging, name, archive):
    """Where an archive member lands; a name that escapes the destination is a DataError."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    bad = name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")
    path = staging.joinpath(*parts).resolve()
    if bad or not path.is_relative_to(staging.resolve()):
        raise DataError(f"{archive.name}: refusing member {name!r}: it would land outside"
                        f" {staging}")
    return path


def _archive_members(archive, handle, staging):
    """[(path, size, open_member or None for a folder)], every path checked before any write."""
    if isinstance(handle, zipfile.ZipFile):
        return [(_member_path(staging, i.filename, archive), i.file_size,
                 None if i.is_dir() else (lambda i=i: handle.open(i)))
                for i in handle.infolist()]
    members = []
    for m in handle.getmembers():
        if not (m.isfile() or m.isdir()):
            raise DataError(f"{archive.name}: refusing member {m.name!r}: links and special files"
                            " are not extracted")
        members.append((_member_path(staging, m.name, archive), m.size,
                        None if m.isdir() else (lambda m=m: handle.extractfile(m))))
    return members


def extract_archive(archive, target):
    """Unpack a .zip or .tar(.gz) into the folder `target`, refusing members outside it."""
    staging = target.with_name(f".{target.name}.extracting")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        is_zip = zipfile.is_zipfile(archive)
        with (zipfile.ZipFile(archive) if is_zip else tarfile.open(archive)) as handle:
            members = _archive_members(archive, handle, staging)
            total = sum(size for _, size, opener in members if opener)
            with _progress(f"unpack {archive.name}", total, 0) as bar:
                for path, _, opener in members:
                    if opener is None:
                        path.mkdir(parents=True, exist_ok=True)
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with opener() as fin, open(path, "wb") as fout:
                        while chunk := fin.read(CHUNK):
                            fout.write(chunk)
                            bar.update(len(chunk))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        shutil.rmtree(staging)
        raise DataError(f"{archive}: cannot unpack ({e})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    inside = list(staging.iterdir())       # an archive holding one folder named like the target
    src = inside[0] if len(inside) == 1 and inside[0].is_dir() and inside[0].name == target.name \
        else staging
    if target.exists():
        shutil.rmtree(target)              # an earlier unpacking that was never marked verified
    os.replace(src, target)
    if src != staging:
        staging.rmdir()
    return target


def _checksum(spec):
    return f"md5 {spec.md5}" if spec.md5 else f"sha256 {spec.sha256}" if spec.sha256 else None


def archive_verified(spec, target):
    """True when `target` was unpacked from an archive that matched this spec's checksum."""
    mark = target / VERIFIED_MARK
    return mark.is_file() and _checksum(spec) is not None and \
        mark.read_text().split("  ")[0] == _checksum(spec)


def fetch_archive(entry, root, mirror=None, keep_archive=False, timeout=TIMEOUT_S):
    """Download, verify and unpack an archive entry; returns the folder it unpacked into."""
    spec, target = entry.files[0], root / entry.extract_to
    if archive_verified(spec, target):
        print(f"{entry.name}: {target} already unpacked from a verified archive")
        return target
    what = get_file(spec, root, mirror, timeout)
    archive = root / spec.relpath
    extract_archive(archive, target)
    (target / VERIFIED_MARK).write_text(f"{_checksum(spec) or 'unverified'}  {archive.name}\n")
    if keep_archive:
        kept = f"kept the archive {archive}"
    else:
        archive.unlink()
        kept = f"deleted the archive {archive.name} (--keep-archive keeps it)"
    print(f"{entry.name}: {what}, unpacked into {target}; {kept}")
    return target


def download_entry(entry, root, mirror=None, keep_archive=False, timeout=TIMEOUT_S):
    """Every file of one entry under `root`; returns their paths (or the unpacked folder)."""
    if entry.extract_to:
        return [fetch_archive(entry, root, mirror, keep_archive, timeout)]
    outcomes = Counter(get_file(spec, root, mirror, timeout) for spec in entry.files)
    summary = ", ".join(f"{n} {what}" for what, n in outcomes.items())
    print(f"{entry.name}: {summary}")
    return [root / spec.relpath for spec in entry.files]


def download(names, data_dir=None, mirror=None, keep_archive=False, timeout=TIMEOUT_S):
    """Fetch, verify and place the named entries under the data root; returns the paths."""
    entries = registry()
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise DataError(f"unknown data name {', '.join(unknown)}; the names are listed by:"
                        "  python -m common.data list")
    root = data_root(data_dir)
    mirror = os.environ.get(MIRROR_ENV) if mirror is None else mirror
    print(f"data root: {root}" + (f"  (book files from ${MIRROR_ENV}={mirror})" if mirror else ""))
    paths = []
    for name in dict.fromkeys(names):
        paths += download_entry(entries[name], root, mirror, keep_archive, timeout)
    return paths


def entry_status(entry, root):
    """Whether an entry is under `root` and verified, in a few words (hashes every file)."""
    if entry.extract_to:
        spec, target = entry.files[0], root / entry.extract_to
        archive = root / spec.relpath
        if archive_verified(spec, target):
            return "verified (unpacked)"
        if archive.exists():
            return "archive present, not unpacked"
        if archive.with_name(archive.name + ".part").exists():
            return "partial download"
        return "present, not verified" if target.is_dir() else "missing"
    found = Counter()
    for spec in entry.files:
        path = root / spec.relpath
        ok = verify(spec, path)[0] if path.exists() else "missing"
        found[{True: "verified", False: "mismatch", None: "unverifiable"}.get(ok, ok)] += 1
    n = len(entry.files)
    if found["mismatch"]:
        return f"CHECKSUM MISMATCH ({found['mismatch']} of {n})"
    if found["missing"] == n:
        return "missing"
    if found["missing"]:
        return f"incomplete ({n - found['missing']} of {n} present)"
    if found["unverifiable"] == n:
        return "present, not verifiable"
    if found["unverifiable"]:
        return f"verified ({found['unverifiable']} without checksum)"
    return "verified"


def list_data(data_dir=None):
    """Print every name: files, total size, status under the data root; returns the rows."""
    root = data_root(data_dir)
    rows = []
    for entry in registry().values():
        sizes = [spec.size for spec in entry.files]
        known, unknown = sum(s for s in sizes if s is not None), None in sizes
        size = "?" if unknown and not known else human_size(known) + ("+" if unknown else "")
        rows.append({"name": entry.name, "files": len(entry.files), "size": size,
                     "status": entry_status(entry, root), "about": entry.about})
    print(f"data root: {root}")
    print(f"{'NAME':<20}{'FILES':>5}  {'SIZE':>11}  {'STATUS':<32}ABOUT")
    for r in rows:
        print(f"{r['name']:<20}{r['files']:>5}  {r['size']:>11}  {r['status']:<32}{r['about']}")
    print("get one with:  python -m common.data download NAME [NAME...]")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m common.data",
                                description="List and download the data the chapters read.")
    sub = p.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="every name: files, size, present and verified or not")
    add_data_dir_argument(p_list)
    p_get = sub.add_parser("download", help="download, verify (and unpack) the named data")
    p_get.add_argument("names", nargs="+", metavar="NAME", help="registry names, see `list`")
    p_get.add_argument("--keep-archive", action="store_true",
                       help="keep .zip/.tar.gz archives after unpacking them (default: delete)")
    add_data_dir_argument(p_get)
    args = p.parse_args(argv)
    if args.command == "list":
        return list_data(args.data_dir)
    return download(args.names, args.data_dir, keep_archive=args.keep_archive)


if __name__ == "__main__":
    run_cli(main)
