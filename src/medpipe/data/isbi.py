"""ISBI 2012 EM membrane segmentation (the U-Net paper's data), per-slice PNG layout.

Layout (that of ``zhixuhao/unet``, the common per-slice copy of the challenge stacks):
``membrane/train/image/<i>.png`` (512x512 grey), ``membrane/train/label/<i>.png`` (0 = membrane,
255 = cell interior) and ``membrane/test/<i>.png`` (no labels: the challenge never released them).

The structure of interest, the membrane, is the *black* class, so ``invert_mask: true`` (the
default here) makes membrane = 1. The 30 labelled slices are split train/val/test; the 30 test
slices form the ``unlabelled`` split, for ``medpipe predict --split unlabelled``.

Online, the 90 PNGs are downloaded from that repository at a fixed commit and checked against the
MD5s below (computed from the same files in the data mirror, whose bytes equal the repository's).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medpipe.data.segmentation import Sample, SegmentationDataModule
from medpipe.data.sources import RemoteFile, fetch_files
from medpipe.errors import DataError

BASE_URL = (
    "https://raw.githubusercontent.com/zhixuhao/unet/b45af4d458437d8281cc218a07fd4380818ece4a/data"
)
IMAGES, LABELS, TEST = "membrane/train/image", "membrane/train/label", "membrane/test"


def _words(text: str) -> list[str]:
    return text.split()


# MD5 of <folder>/<i>.png for i = 0..29, in order.
MD5: dict[str, list[str]] = {
    "membrane/train/image": _words(
        "2afebfcb620840fdd1b1e4ceb4a588c7 ab7a063834b43ec69b446b3fff8c57c1 d45a75c5f4a267af1fbe86a0e5707c3f "
        "3197cfd787fd16b78e4b2392626a4ba2 ea64734a24519eeb094880ce6f21b282 e3943eae65395f49dc2ec3c5253735ce "
        "957776eb2bc432fd4b744971851282df 5b38e1af13122d955ae40af7d6b73e59 0dfb73dd214eff1d0a71e62837c68b9d "
        "abc449b7f9bf04497100905ac5759f4a 6f6aa289d892900549835072eab69ad6 4c10214544e9234d844c272871536232 "
        "9bf58a68ec63eacf647121fc19245db5 11ae1cd1c03f6986e3f991c22305dbc9 ab9d88144bff97089c2cf070f42083a4 "
        "1d2ee42dc07b1c4978a2586e4cd1c171 5a09a3b20492f4925956c2ba99ad20ce 6e78641e557f07b9da13d454e994c824 "
        "e154c4566390f22bea2b38cb03bae898 8a90e5b6da3047995cf7e3f75cb4aa8f 2d28240351c28943b8f226fd5c10fbc2 "
        "adda4ca4aa9ea6efd1c77d8a44c752de f0a4aa8d44f248b9d520f6a45b0d459a 644f6133fa0fa77a870ee946c6ffc30b "
        "e06a025dc3a0fb3309f2fb130e6d478a 6bc5e991ec2f00f158996e3f223ff7eb bd5a877ce0f37c7a18a535dfba720da6 "
        "5954583276f09d3c564e5c58561b2a2b f9d7fd408dcbb38fffe6c56cd0bda268 4d2138716b147e03cf3f119d49f99f56 "
    ),
    "membrane/train/label": _words(
        "da1f734751b9a674df60e4a3a7edebc9 547fa0459c175628fab1784bc80acd34 fdbed6ad4644adb64fc891cfa6311c9e "
        "15a2d51869b2ba0caf2dc023416b3acd 648e37ac977dcdbfde13b3189f6f14bc f15b4f0b114edd34d36e2eac01b2c314 "
        "2471b244c69e36e2491b534d1677a36f 26bff7693a05ddf93a51ec836518bef6 090f8eae5881578392c1de379b7679ae "
        "4503fd4ecb55fb842c480439d825e8f1 5b7c2ee0ce40ede3cdd1a389886c8145 613111fb34ab2e13951acbdfcb6d59a7 "
        "55d9a4154f40dc3d92237028d3c9bd09 3213cf3ae031b269543ff8e784e99f1d 0828e0790593b7c9cdcfd7bb78e296c2 "
        "04adcd40931c9e30a59b0dabb991b9c7 a82ab66840f2249d1fdf726a929cdf09 52c2f32fe6311699724808f598c98edf "
        "634422fa516f07c0f224be0f856df601 68a52b1b17b465508a05801720da3ad2 38ed77eb4d6f516fd4b22e0db12ec45c "
        "0307d353eea251649dce9a2909ff4ad8 83985d4942ba3905560093661f77652b 6d8ac95219260433f2546b6e8a66585a "
        "787261f7cbb594015955c6491214b5e3 616a2c0b2a54a7c28c96c9447f3bf364 3c7ec84e48ce0b5038bab9752527b183 "
        "d81cd1a3c198c2c5b393053ff27a454f 199d4ee83d2ee787164f986c7390917b 346bddb250726f10e9087b93810779e9 "
    ),
    "membrane/test": _words(
        "b6c5cd76aa612a1ae6e8ef7e3bedc8a5 eb030c5685c5e5fe7c321d52bf98b58e a412acc3aef5654a8c3a0ad8c7b3dce2 "
        "1225f358dfa1ed08b1073db6163dcbe3 6d49b9278617fb66cd931142c669ee21 077cad4219987df6b6aee87252d6c65f "
        "d1ddcab1f1c5621ebe84c20fdde4f0b2 e62d46c2d53922f50263f5dd58daa2d9 4dac21721ab8572e232f0386feabb28b "
        "c99d41cf550e49976c7698a2e4cee1b4 2350fc37b5506a05269d464e8d80dc47 bdd3e802a6a05843af71b892794c68d1 "
        "2e05d457db6e1a54d2b6b9282d122d1e be349aee848375dbe8892b66f7ad7583 f13cc81ad27ad82cb6a3ee219071002c "
        "1de2dc4fe4fdc7e3ed8ce714fe1bcc2f 1ea47fd0263b9154a6b7beced0d14d8d 502210702f42ffd7e1c998370b1b0137 "
        "71bbc39b1dd34107b208a8150bf2472e c801f782ba3f2693efc2ea267af3b791 67ed802e1c6186c777fd5c0d47b51a57 "
        "b5735e4279d27496f4e264e1e008e119 500aab18545f447d5f0d3d58fab8c4a1 4b25f5338df488c491fb455c985e0e56 "
        "3ddc3e80c7b38b4a5b9f98afa9f7514f 7f4037eabffce575c41b92a43790a90e cf21c209ec3d73d74d0aa22b30e49d1b "
        "c211304ce149002d43a15c146134d918 01538cc5e02e25d7dcca7ee7aca93cb0 1e5c7a140735391df0001ae69accbc4a "
    ),
}
_INDEX = re.compile(r"(\d+)\.png")


def isbi_remote_files(base_url: str = BASE_URL) -> list[RemoteFile]:
    """The 90 upstream PNGs with their pinned MD5s."""
    return [
        RemoteFile(f"{folder}/{i}.png", f"{base_url}/{folder}/{i}.png", md5)
        for folder, md5s in MD5.items()
        for i, md5 in enumerate(md5s)
    ]


def _numbered(folder: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for path in folder.glob("*.png"):
        match = _INDEX.fullmatch(path.name)
        if match is None:
            raise DataError(
                f"{path}: unexpected file in {folder}; ISBI slices are named <i>.png. "
                "Rename or remove it."
            )
        out[int(match.group(1))] = path
    return out


def discover_isbi(base: Path) -> list[Sample]:
    """Labelled training pairs, then the unlabelled test slices (if present)."""
    images, labels = _numbered(base / IMAGES), _numbered(base / LABELS)
    if not images:
        raise DataError(
            f"{base / IMAGES} holds no slices (<i>.png); run `medpipe fetch data=isbi`."
        )
    missing = sorted(images.keys() - labels.keys())
    if missing:
        raise DataError(
            f"{images[missing[0]]} has no label: expected {base / LABELS / f'{missing[0]}.png'}. "
            "Fetch the data again (`medpipe fetch --force data=isbi`)."
        )
    orphans = sorted(labels.keys() - images.keys())
    if orphans:
        raise DataError(f"label {labels[orphans[0]]} has no image in {base / IMAGES}.")
    samples = [Sample(id=f"train_{i}", image=images[i], masks=(labels[i],)) for i in sorted(images)]
    if (base / TEST).is_dir():
        test = _numbered(base / TEST)
        samples += [Sample(id=f"test_{i}", image=test[i], labelled=False) for i in sorted(test)]
    return samples


class ISBIDataModule(SegmentationDataModule):
    """ISBI 2012 neuronal membranes: 30 labelled 512x512 slices (+30 unlabelled)."""

    dataset_name = "isbi"
    default_class_names = ("cell", "membrane")

    def __init__(self, *, base_url: str = BASE_URL, **kwargs: Any) -> None:
        kwargs.setdefault("invert_mask", True)
        kwargs.setdefault("channels", 1)
        kwargs.setdefault("mirror_subdir", "isbi2012")
        super().__init__(**kwargs)
        self.base_url = base_url

    def discover(self) -> list[Sample]:
        return discover_isbi(self.root)

    def mirror_paths(self, mirror_dir: Path) -> list[str]:
        files = [
            p for folder in (IMAGES, LABELS, TEST) for p in (mirror_dir / folder).glob("*.png")
        ]
        return sorted(p.relative_to(mirror_dir).as_posix() for p in files if p.is_file())

    def remote_md5(self, relpath: str) -> str | None:
        folder, _, name = relpath.rpartition("/")
        match = _INDEX.fullmatch(name)
        md5s = MD5.get(folder)
        return md5s[int(match.group(1))] if md5s and match and int(match.group(1)) < 30 else None

    def download(self, force: bool = False) -> list[Path]:
        return fetch_files(isbi_remote_files(self.base_url), self.root, force=force)
