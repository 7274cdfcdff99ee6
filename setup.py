"""Install vggproto.  `pip install -e .[test]` gives everything the test suite needs."""
from setuptools import find_packages, setup

setup(
    name="vggproto",
    version="0.1.0",
    description="Caffe-compatible toolchain for the VGG very deep ConvNets: prototxt/caffemodel I/O, generator, "
                "PyTorch interpreter, Caffe-exact training and the paper's evaluation",
    packages=find_packages(include=["vggproto", "vggproto.*"]),
    package_data={"vggproto": ["data/*"], "vggproto.data": ["*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "protobuf>=7.35.1,<8",   # the committed caffe_pb2.py was generated for this runtime
        "numpy>=1.24",
        "torch>=2.2",
        "h5py>=3.8",
        "click>=8.1",
        "graphviz>=0.20",
        "tqdm>=4.60",
        "lmdb>=1.4",
        "matplotlib>=3.7",
        "pillow>=9",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "torchvision>=0.17", "opencv-python-headless>=4.8,<5",
                 "scikit-image>=0.22", "onnx>=1.15", "onnxruntime>=1.17", "safetensors>=0.4",
                 "scikit-learn>=1.3", "grpcio-tools==1.85.1",
                 "ruff==0.17.6"],  # pinned: a new ruff may add rules and fail `make test`
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        "dev": ["grpcio-tools==1.85.1"],
    },
    entry_points={"console_scripts": ["vggproto=vggproto.cli:main"]},
)
