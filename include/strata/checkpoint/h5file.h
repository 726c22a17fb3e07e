// Tensors, strings and numbers in HDF5 files: the storage layer of checkpoints and
// of `strata op` inputs and outputs, readable by h5py or any HDF5 tool.
//
// Names are HDF5 paths: "/model/layers.0.mixer.in_proj.weight" is the dataset
// "layers.0.mixer.in_proj.weight" in the group "/model" (dots are ordinary
// characters; the leading slash is optional). Tensors keep their shape; every
// tensor dataset carries an attribute "strata_dtype" with the Strata dtype name.
// bfloat16 and float16 are stored as 16-bit unsigned integers holding the bits
// (HDF5 has no bfloat16 type); bool is stored as uint8. Files written by other
// programs (no attribute) are read by their HDF5 type: IEEE float 16/32/64, signed
// integers 32/64, uint8, other integer widths widened to int64.
//
// A file is written completely or not at all: H5Writer writes "<path>.tmp-<pid>",
// and commit() flushes, fsyncs and renames it onto `path`; a writer destroyed
// without commit() deletes its temporary file and leaves `path` as it was.
//
// Every failure is a one-line strata::Error naming the file and the dataset; the
// HDF5 library's own error printing is switched off. The HDF5 library is not
// thread-safe; these classes serialise their calls, so writers and readers may be
// used from different threads (one object at a time per thread).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "strata/core/tensor.h"

namespace strata::checkpoint {

class H5Writer {
 public:
  explicit H5Writer(const std::string& path);
  ~H5Writer();
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  // Any dtype and device (copied to the host); groups are created as needed.
  void write_tensor(const std::string& name, const Tensor& tensor);
  void write_string(const std::string& name, const std::string& value);
  void write_int(const std::string& name, int64_t value);
  void write_double(const std::string& name, double value);
  // Makes the file appear at `path` atomically. Nothing can be written afterwards.
  void commit();

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string temporary_path_;
  int64_t file_ = -1;  // hid_t
  bool committed_ = false;
};

class H5Reader {
 public:
  // Errors: the file is missing, is not HDF5, or is truncated or corrupted.
  explicit H5Reader(const std::string& path);
  ~H5Reader();
  H5Reader(const H5Reader&) = delete;
  H5Reader& operator=(const H5Reader&) = delete;

  bool has(const std::string& name) const;  // a dataset or a group
  // Full paths of the datasets under `group` ("/" or "" = the whole file),
  // recursively, sorted: {"/model/layers.0.weight", "/model/norm.weight"}.
  std::vector<std::string> list(const std::string& group) const;
  Tensor read_tensor(const std::string& name) const;  // a CPU tensor of the stored dtype
  std::string read_string(const std::string& name) const;
  int64_t read_int(const std::string& name) const;
  double read_double(const std::string& name) const;  // integers are converted

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int64_t file_ = -1;  // hid_t
};

}  // namespace strata::checkpoint
