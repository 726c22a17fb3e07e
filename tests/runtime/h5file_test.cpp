// HDF5 tensor files: exact round trips of every dtype, atomic commits, and one-line
// errors for missing, foreign, truncated and mis-typed content.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "strata/checkpoint/h5file.h"
#include "support/check.h"
#include "support/temporary_folder.h"

using namespace strata;
using checkpoint::H5Reader;
using checkpoint::H5Writer;
namespace fs = std::filesystem;

namespace {

using testing::TemporaryFolder;

using testing::message_of;

std::vector<std::string> folder_entries(const fs::path& folder) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// The raw bytes of a tensor, to compare 16-bit types bit for bit.
std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return std::vector<uint8_t>(p, p + c.numel() * c.element_size());
}

}  // namespace

TEST_CASE("every dtype round-trips exactly, with its shape, under dotted names in groups") {
  TemporaryFolder folder("h5file-test");
  const std::string path = folder.file("tensors.h5");
  std::vector<float> values{1.0f, -2.5f, 3.140625f, 1e-3f, -0.0f, 65504.0f};
  Tensor f32 = Tensor::from_vector<float>(values, {2, 3});
  std::map<std::string, Tensor> written{
      {"/model/layers.0.mixer.in_proj.weight", f32},
      {"/model/layers.0.mixer.A_log", f32.to(DType::Float64)},
      {"/model/bf16", f32.to(DType::BFloat16)},
      {"/model/f16", f32.to(DType::Float16)},
      {"/ints/int32", Tensor::from_vector<int32_t>({-7, 0, 2147483647}, {3})},
      {"/ints/int64", Tensor::from_vector<int64_t>({-1, 1LL << 40}, {2, 1})},
      {"/ints/uint8", Tensor::from_vector<uint8_t>({0, 255, 17}, {3})},
      {"/ints/bool", Tensor::from_vector<bool>({true, false, true, true}, {2, 2})},
      {"/scalar", Tensor::scalar(2.5, DType::Float64)},
      {"/empty", Tensor::empty({0, 4}, DType::Float32)},
      {"/deep/a/b/c/d", Tensor::arange(5)},
  };
  {
    H5Writer writer(path);
    for (const auto& [name, tensor] : written) writer.write_tensor(name, tensor);
    // Non-contiguous input is written in logical order.
    writer.write_tensor("transposed", f32.as_strided({3, 2}, {1, 3}, 0));
    writer.commit();
  }
  H5Reader reader(path);
  for (const auto& [name, tensor] : written) {
    CAPTURE(name);
    Tensor back = reader.read_tensor(name);
    CHECK(back.dtype() == tensor.dtype());
    CHECK(back.shape() == tensor.shape());
    CHECK(back.device().is_cpu());
    CHECK(bytes_of(back) == bytes_of(tensor));
  }
  CHECK(reader.read_tensor("transposed").to_vector<float>() ==
        std::vector<float>{1.0f, 1e-3f, -2.5f, -0.0f, 3.140625f, 65504.0f});
  CHECK(reader.read_tensor("/model/bf16").to(DType::Float32).to_vector<float>()[2] == 3.140625f);

  CHECK(reader.has("/model/layers.0.mixer.A_log"));
  CHECK(reader.has("model/bf16"));  // the leading slash is optional
  CHECK(reader.has("/model"));      // groups count
  CHECK_FALSE(reader.has("/model/layers.0"));
  CHECK_FALSE(reader.has("/nothing/here"));
  CHECK(reader.list("/model") == std::vector<std::string>{"/model/bf16", "/model/f16", "/model/layers.0.mixer.A_log",
                                                          "/model/layers.0.mixer.in_proj.weight"});
  CHECK(reader.list("/").size() == written.size() + 1);
  CHECK(reader.list("/deep") == std::vector<std::string>{"/deep/a/b/c/d"});
}

TEST_CASE("strings and numbers round-trip; reading the wrong kind says what is stored") {
  TemporaryFolder folder("h5file-test");
  const std::string path = folder.file("values.h5");
  {
    H5Writer writer(path);
    writer.write_string("/meta/config", "model:\n  d_model: 64\n");
    writer.write_string("/meta/empty", "");
    writer.write_string("/meta/unicode", "pas de problème");
    writer.write_int("/meta/step", 1234567890123LL);
    writer.write_int("/meta/negative", -5);
    writer.write_double("/meta/lr", 3e-4);
    writer.commit();
  }
  H5Reader reader(path);
  CHECK(reader.read_string("/meta/config") == "model:\n  d_model: 64\n");
  CHECK(reader.read_string("/meta/empty").empty());
  CHECK(reader.read_string("/meta/unicode") == "pas de problème");
  CHECK(reader.read_int("/meta/step") == 1234567890123LL);
  CHECK(reader.read_int("/meta/negative") == -5);
  CHECK(reader.read_double("/meta/lr") == 3e-4);
  CHECK(reader.read_double("/meta/step") == 1234567890123.0);  // integers convert
  CHECK(message_of([&] { reader.read_int("/meta/lr"); }) == path + ": /meta/lr: holds float64, not an integer");
  CHECK(message_of([&] { reader.read_string("/meta/step"); }) == path + ": /meta/step: holds int64, not a string");
  CHECK(message_of([&] { reader.read_tensor("/meta/config"); }) ==
        path + ": /meta/config: holds a string, not a tensor");
  CHECK(message_of([&] { reader.read_tensor("/meta/absent"); }) == path + ": /meta/absent: no such dataset");
  CHECK(message_of([&] { reader.read_tensor("/meta"); }) == path + ": /meta: is a group, not a dataset");
  CHECK(message_of([&] { reader.list("/nope"); }) == path + ": /nope: no such group");
}

TEST_CASE("a writer without commit() leaves nothing and never touches an existing file") {
  TemporaryFolder folder("h5file-test");
  const std::string path = folder.file("checkpoint.h5");
  {
    H5Writer writer(path);
    writer.write_int("/step", 1);
    CHECK(folder_entries(folder.path) == std::vector<std::string>{"checkpoint.h5.tmp-" + std::to_string(getpid())});
  }
  CHECK(folder_entries(folder.path).empty());

  {
    H5Writer writer(path);
    writer.write_int("/step", 1);
    writer.commit();
  }
  auto original_size = fs::file_size(path);
  auto original_time = fs::last_write_time(path);
  {
    H5Writer writer(path);
    writer.write_int("/step", 2);
    writer.write_tensor("/big", Tensor::zeros({1000}));
  }  // abandoned
  CHECK(folder_entries(folder.path) == std::vector<std::string>{"checkpoint.h5"});
  CHECK(fs::file_size(path) == original_size);
  CHECK(fs::last_write_time(path) == original_time);
  CHECK(H5Reader(path).read_int("/step") == 1);

  {
    H5Writer writer(path);
    writer.write_int("/step", 3);
    writer.commit();
    CHECK(message_of([&] { writer.write_int("/late", 1); }) == path + ": /late: the file was already committed");
  }
  CHECK(H5Reader(path).read_int("/step") == 3);  // a commit replaces the old file
  CHECK(folder_entries(folder.path) == std::vector<std::string>{"checkpoint.h5"});
}

TEST_CASE("missing, foreign and truncated files give one-line errors") {
  TemporaryFolder folder("h5file-test");
  const std::string missing = folder.file("missing.h5");
  CHECK(message_of([&] { H5Reader reader(missing); }) == missing + ": no such file");

  const std::string garbage = folder.file("garbage.h5");
  std::ofstream(garbage) << "this is not an HDF5 file, just some text pretending to be one\n";
  CHECK(message_of([&] { H5Reader reader(garbage); }) == garbage + ": not a valid HDF5 file (no HDF5 signature)");

  const std::string truncated = folder.file("truncated.h5");
  {
    H5Writer writer(truncated);
    writer.write_tensor("/model/weight", Tensor::ones({64, 64}));
    writer.write_string("/meta/note", "cut in half below");
    writer.commit();
  }
  fs::resize_file(truncated, fs::file_size(truncated) / 2);
  CHECK(message_of([&] { H5Reader reader(truncated); }) ==
        truncated + ": not a valid HDF5 file (truncated or corrupted?)");

  const std::string no_folder = folder.file("absent/x.h5");
  CHECK(message_of([&] { H5Writer writer(no_folder); }) ==
        no_folder + ": cannot write: the folder " + folder.file("absent") + " does not exist");
}

TEST_CASE("writer misuse is reported with the file and dataset") {
  TemporaryFolder folder("h5file-test");
  const std::string path = folder.file("twice.h5");
  H5Writer writer(path);
  writer.write_tensor("/model/w", Tensor::ones({2}));
  CHECK(message_of([&] { writer.write_tensor("model/w", Tensor::ones({2})); }) == path + ": /model/w: written twice");
  CHECK(message_of([&] { writer.write_int("/a//b", 1); }) == path + ": '/a//b' is not a valid dataset name (empty part)");
  CHECK(message_of([&] { writer.write_tensor("/u", Tensor()); }) == path + ": /u: cannot write an undefined tensor");
}
