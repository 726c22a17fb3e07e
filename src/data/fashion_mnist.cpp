// Fashion-MNIST idx files, decompressed with zlib and checked field by field, so a
// damaged or foreign file is named with what is wrong with it.
#include "strata/data/fashion_mnist.h"

#include <zlib.h>

#include <algorithm>
#include <filesystem>

#include "strata/core/error.h"

namespace strata::data {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr uint32_t kLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension
constexpr int64_t kClasses = 10;
constexpr int64_t kMaxImages = 1 << 24;  // far above the 60000 of the real files

class GzipFile {
 public:
  explicit GzipFile(const std::string& path) : path_(path) {
    STRATA_CHECK(std::filesystem::exists(path), "{}: no such file (install the Debian package dataset-fashion-mnist, "
                 "or set data.path to a folder holding the Fashion-MNIST idx .gz files)", path);
    file_ = gzopen(path.c_str(), "rb");
    STRATA_CHECK(file_ != nullptr, "{}: cannot open", path);
  }
  ~GzipFile() { gzclose(file_); }
  GzipFile(const GzipFile&) = delete;
  GzipFile& operator=(const GzipFile&) = delete;

  // Reads up to `size` bytes; returns how many were read (fewer at the end of the file).
  size_t read(void* data, size_t size) {
    size_t done = 0;
    while (done < size) {
      unsigned chunk = static_cast<unsigned>(std::min<size_t>(size - done, 1u << 30));
      int n = gzread(file_, static_cast<char*>(data) + done, chunk);
      if (n < 0) {
        int code = 0;
        const char* message = gzerror(file_, &code);
        STRATA_FAIL("{}: corrupted gzip data: {}", path_, message ? message : "unknown zlib error");
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }

  uint32_t read_big_endian(const char* field) {
    unsigned char bytes[4];
    STRATA_CHECK(read(bytes, 4) == 4, "{}: truncated: the header ends before its {}", path_, field);
    return (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) | (uint32_t{bytes[2]} << 8) | bytes[3];
  }

  void read_exactly(std::vector<uint8_t>& out, const char* what) {
    size_t n = read(out.data(), out.size());
    STRATA_CHECK(n == out.size(), "{}: truncated: expected {} bytes of {} after the header, got {}", path_,
                 out.size(), what, n);
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

void check_magic(const GzipFile& file, uint32_t magic, uint32_t expected, const char* kind) {
  STRATA_CHECK(magic == expected, "{}: bad magic number 0x{:08x}, expected 0x{:08x} ({})", file.path(), magic,
               expected, kind);
}

class FashionMnistDataset final : public Dataset {
 public:
  FashionMnistDataset(ImageSet images, Split split) : images_(std::move(images)), split_(split) {}

  int64_t size() const override { return images_.count; }
  Example example(int64_t index) const override {
    STRATA_CHECK(index >= 0 && index < images_.count, "fashion_mnist {}: image {} out of range [0, {})",
                 split_name(split_), index, images_.count);
    const int64_t pixels = images_.rows * images_.columns;
    Example example;
    example.pixels.resize(pixels);
    const uint8_t* source = images_.pixels.data() + index * pixels;
    for (int64_t i = 0; i < pixels; ++i) example.pixels[i] = static_cast<float>(source[i]) / 255.0f;
    example.targets = {images_.labels[index]};
    return example;
  }
  ExampleShape example_shape() const override {
    return {{1, images_.rows, images_.columns}, DType::Float32, {}};
  }
  int64_t num_classes() const override { return kClasses; }
  std::string description() const override {
    return fmt::format("fashion_mnist {}: {} images of {}x{}, {} classes", split_name(split_), images_.count,
                       images_.rows, images_.columns, kClasses);
  }

 private:
  ImageSet images_;
  Split split_;
};

}  // namespace

ImageSet read_fashion_mnist(const std::string& folder, Split split) {
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  const std::filesystem::path base(folder);
  GzipFile image_file((base / (prefix + "-images-idx3-ubyte.gz")).string());
  GzipFile label_file((base / (prefix + "-labels-idx1-ubyte.gz")).string());

  ImageSet set;
  check_magic(image_file, image_file.read_big_endian("magic number"), kImagesMagic, "an idx3 file of unsigned bytes");
  set.count = image_file.read_big_endian("image count");
  set.rows = image_file.read_big_endian("row count");
  set.columns = image_file.read_big_endian("column count");
  STRATA_CHECK(set.rows == 28 && set.columns == 28, "{}: images are {}x{}, expected 28x28", image_file.path(),
               set.rows, set.columns);
  STRATA_CHECK(set.count <= kMaxImages, "{}: a header claiming {} images is corrupted", image_file.path(), set.count);
  set.pixels.resize(static_cast<size_t>(set.count * set.rows * set.columns));
  image_file.read_exactly(set.pixels, "pixels");

  check_magic(label_file, label_file.read_big_endian("magic number"), kLabelsMagic, "an idx1 file of unsigned bytes");
  const int64_t label_count = label_file.read_big_endian("label count");
  STRATA_CHECK(label_count == set.count, "{}: {} labels for the {} images of {}", label_file.path(), label_count,
               set.count, image_file.path());
  set.labels.resize(static_cast<size_t>(label_count));
  label_file.read_exactly(set.labels, "labels");
  for (size_t i = 0; i < set.labels.size(); ++i) {
    STRATA_CHECK(set.labels[i] < kClasses, "{}: label {} of image {} is not a class in [0, {})", label_file.path(),
                 set.labels[i], i, kClasses);
  }
  return set;
}

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                              "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

std::shared_ptr<const Dataset> open_fashion_mnist(const std::string& folder, Split split) {
  return std::make_shared<FashionMnistDataset>(read_fashion_mnist(folder, split), split);
}

}  // namespace strata::data
