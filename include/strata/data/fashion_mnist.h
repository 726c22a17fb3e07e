// Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 28x28 grey images of clothing in 10
// classes, 60000 for training and 10000 for testing, read from the gzip-compressed
// idx files of the Debian package dataset-fashion-mnist:
//   train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz   (Split::Train)
//   t10k-images-idx3-ubyte.gz,  t10k-labels-idx1-ubyte.gz    (Split::Val: the test set)
// idx format: a big-endian header (magic 0x00000803 for images, 0x00000801 for
// labels, then the count, then rows and columns for images), then one byte per
// pixel or label.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "strata/data/dataset.h"

namespace strata::data {

inline constexpr const char* kFashionMnistFolder = "/usr/share/datasets/fashion-mnist";

struct ImageSet {
  int64_t count = 0, rows = 0, columns = 0;
  std::vector<uint8_t> pixels;  // (count, rows, columns), row-major
  std::vector<uint8_t> labels;  // (count), each in [0, 10)
};

// Reads and validates one split (magic numbers, sizes, label range, matching counts).
ImageSet read_fashion_mnist(const std::string& folder, Split split);

// "T-shirt/top", "Trouser", ..., "Ankle boot": the label's meaning.
const std::vector<std::string>& fashion_mnist_class_names();

// Examples: pixels / 255 as (1, 28, 28) floats, the label as the one target.
std::shared_ptr<const Dataset> open_fashion_mnist(const std::string& folder, Split split);

}  // namespace strata::data
