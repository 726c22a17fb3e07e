// HDF5 storage through the C API. Every handle is owned by an Hid (closed on scope
// exit, also when an error is thrown), every call is checked, and HDF5's error
// stack is turned into one line: ours names the file and dataset, HDF5's innermost
// description is appended where it says something the user can act on.
#include "strata/checkpoint/h5file.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <utility>

#include "strata/core/error.h"

namespace strata::checkpoint {

static_assert(sizeof(hid_t) == sizeof(int64_t), "H5Writer and H5Reader keep hid_t as int64_t");

namespace {

constexpr const char* kDtypeAttribute = "strata_dtype";

// The HDF5 library (Debian's build is not thread-safe) is used by one thread at a time.
std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

struct LibraryLock {
  std::lock_guard<std::recursive_mutex> lock{hdf5_mutex()};
  LibraryLock() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }  // per thread in thread-safe builds
};

// An HDF5 identifier that closes itself.
class Hid {
 public:
  Hid(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Hid() {
    if (id_ >= 0) close_(id_);
  }
  Hid(Hid&& other) noexcept : id_(std::exchange(other.id_, -1)), close_(other.close_) {}
  Hid& operator=(Hid&& other) noexcept {
    std::swap(id_, other.id_);
    std::swap(close_, other.close_);
    return *this;
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// HDF5's most specific description of the last failure (then clears the stack).
std::string hdf5_detail() {
  std::string detail;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* error, void* out) -> herr_t {
        if (n == 0 && error->desc) *static_cast<std::string*>(out) = error->desc;
        return 0;
      },
      &detail);
  H5Eclear2(H5E_DEFAULT);
  return detail.empty() ? "HDF5 gave no reason" : detail;
}

// "/model/layers.0.weight" from "model/layers.0.weight" or "/model/layers.0.weight".
std::string normalize_name(const std::string& file, const std::string& name) {
  std::string normalized = name.empty() || name[0] != '/' ? "/" + name : name;
  while (normalized.size() > 1 && normalized.back() == '/') normalized.pop_back();
  STRATA_CHECK(normalized.find("//") == std::string::npos, "{}: '{}' is not a valid dataset name (empty part)",
               file, name);
  return normalized;
}

hid_t file_access_properties() {
  hid_t properties = H5Pcreate(H5P_FILE_ACCESS);
  // Close every object with the file, so a closed file is complete on disk.
  H5Pset_fclose_degree(properties, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
  // Files are written under a temporary name and renamed, so locks protect nothing,
  // and they fail on some cluster file systems.
  H5Pset_file_locking(properties, false, true);
#endif
  return properties;
}

bool link_exists(hid_t file, const std::string& normalized) {
  if (normalized == "/") return true;
  // H5Lexists needs every parent to exist: check each prefix in turn.
  for (size_t slash = normalized.find('/', 1);; slash = normalized.find('/', slash + 1)) {
    std::string prefix = normalized.substr(0, slash);
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) return true;
  }
}

struct StorageType {
  hid_t file_type;    // how the values are stored
  hid_t memory_type;  // how they are laid out in the Tensor
};

StorageType storage_type(DType dtype) {
  switch (dtype) {
    case DType::Float32: return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case DType::Float64: return {H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE};
    case DType::BFloat16:
    case DType::Float16: return {H5T_STD_U16LE, H5T_NATIVE_UINT16};  // the bits; strata_dtype says which
    case DType::Int32: return {H5T_STD_I32LE, H5T_NATIVE_INT32};
    case DType::Int64: return {H5T_STD_I64LE, H5T_NATIVE_INT64};
    case DType::UInt8:
    case DType::Bool: return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
  }
  STRATA_FAIL("unknown dtype");
}

// "float32", "int16", "a string", ... for messages about what a dataset holds.
std::string describe_type(hid_t type) {
  size_t size = H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_FLOAT: return fmt::format("float{}", size * 8);
    case H5T_INTEGER: return fmt::format("{}int{}", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", size * 8);
    case H5T_STRING: return "a string";
    case H5T_ENUM: return "an enum";
    case H5T_COMPOUND: return "a compound type";
    default: return "a non-numeric type";
  }
}

Hid fixed_string_type(size_t length) {
  Hid type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(length, 1));  // HDF5 has no zero-length strings
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  return type;
}

// Raw datasets: one scalar or an n-dimensional array.
Hid make_dataspace(const Shape& shape) {
  if (shape.empty()) return Hid(H5Screate(H5S_SCALAR), H5Sclose);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return Hid(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
}

Shape dataspace_shape(hid_t space) {
  int rank = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(std::max(rank, 0));
  if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  return Shape(dims.begin(), dims.end());
}

std::string attribute_string(hid_t object, const char* attribute) {
  if (H5Aexists(object, attribute) <= 0) return {};
  Hid handle(H5Aopen(object, attribute, H5P_DEFAULT), H5Aclose);
  Hid type(H5Aget_type(handle.get()), H5Tclose);
  if (!handle.valid() || H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0) return {};
  std::string value(H5Tget_size(type.get()), '\0');
  if (H5Aread(handle.get(), type.get(), value.data()) < 0) return {};
  return value.substr(0, value.find('\0'));
}

}  // namespace

// ---------------------------------------------------------------------------

H5Writer::H5Writer(const std::string& path)
    : path_(path), temporary_path_(fmt::format("{}.tmp-{}", path, static_cast<long>(getpid()))) {
  LibraryLock lock;
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code error;
  STRATA_CHECK(parent.empty() || std::filesystem::is_directory(parent, error),
               "{}: cannot write: the folder {} does not exist", path_, parent.string());
  Hid properties(file_access_properties(), H5Pclose);
  file_ = H5Fcreate(temporary_path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, properties.get());
  STRATA_CHECK(file_ >= 0, "{}: cannot create the temporary file {}: {}", path_, temporary_path_, hdf5_detail());
}

H5Writer::~H5Writer() {
  if (committed_) return;
  LibraryLock lock;
  if (file_ >= 0) H5Fclose(file_);
  H5Eclear2(H5E_DEFAULT);
  std::remove(temporary_path_.c_str());
}

namespace {

// Creates the dataset `name` (and any missing groups above it) in `file`.
Hid create_dataset(hid_t file, const std::string& path, const std::string& name, hid_t type, hid_t space) {
  STRATA_CHECK(file >= 0, "{}: {}: the file was already committed", path, name);
  STRATA_CHECK(name != "/", "{}: '/' is the root group, not a dataset name", path);
  STRATA_CHECK(!link_exists(file, name), "{}: {}: written twice", path, name);
  Hid link_properties(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(link_properties.get(), 1);
  Hid dataset(H5Dcreate2(file, name.c_str(), type, space, link_properties.get(), H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
  STRATA_CHECK(dataset.valid(), "{}: {}: cannot create the dataset: {}", path, name, hdf5_detail());
  return dataset;
}

void write_scalar(hid_t file, const std::string& path, const std::string& name, hid_t file_type, hid_t memory_type,
                  const void* value) {
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  Hid dataset = create_dataset(file, path, name, file_type, space.get());
  STRATA_CHECK(H5Dwrite(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, value) >= 0,
               "{}: {}: cannot write: {}", path, name, hdf5_detail());
}

}  // namespace

void H5Writer::write_tensor(const std::string& name, const Tensor& tensor) {
  LibraryLock lock;
  const std::string normalized = normalize_name(path_, name);
  STRATA_CHECK(tensor.defined(), "{}: {}: cannot write an undefined tensor", path_, normalized);
  Tensor host = tensor.to(Device::cpu()).contiguous();
  StorageType type = storage_type(host.dtype());
  Hid space = make_dataspace(host.shape());
  Hid dataset = create_dataset(file_, path_, normalized, type.file_type, space.get());
  if (host.numel() > 0) {
    STRATA_CHECK(H5Dwrite(dataset.get(), type.memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, host.data_ptr()) >= 0,
                 "{}: {}: cannot write {}: {}", path_, normalized, host.str(), hdf5_detail());
  }
  const std::string dtype = dtype_name(host.dtype());
  Hid string_type = fixed_string_type(dtype.size());
  Hid scalar(H5Screate(H5S_SCALAR), H5Sclose);
  Hid attribute(H5Acreate2(dataset.get(), kDtypeAttribute, string_type.get(), scalar.get(), H5P_DEFAULT, H5P_DEFAULT),
                H5Aclose);
  STRATA_CHECK(attribute.valid() && H5Awrite(attribute.get(), string_type.get(), dtype.c_str()) >= 0,
               "{}: {}: cannot write its {} attribute: {}", path_, normalized, kDtypeAttribute, hdf5_detail());
}

void H5Writer::write_string(const std::string& name, const std::string& value) {
  LibraryLock lock;
  const std::string normalized = normalize_name(path_, name);
  Hid type = fixed_string_type(value.size());
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  write_scalar(file_, path_, normalized, type.get(), type.get(), padded.data());
}

void H5Writer::write_int(const std::string& name, int64_t value) {
  LibraryLock lock;
  write_scalar(file_, path_, normalize_name(path_, name), H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void H5Writer::write_double(const std::string& name, double value) {
  LibraryLock lock;
  write_scalar(file_, path_, normalize_name(path_, name), H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

void H5Writer::commit() {
  LibraryLock lock;
  STRATA_CHECK(file_ >= 0, "{}: committed twice", path_);
  STRATA_CHECK(H5Fflush(file_, H5F_SCOPE_GLOBAL) >= 0, "{}: cannot flush {}: {}", path_, temporary_path_,
               hdf5_detail());
  herr_t closed = H5Fclose(file_);
  file_ = -1;
  STRATA_CHECK(closed >= 0, "{}: cannot close {}: {}", path_, temporary_path_, hdf5_detail());
  // The data must be on disk before the new name points at it, and the rename
  // must be on disk before anyone is told the file exists.
  int fd = ::open(temporary_path_.c_str(), O_RDONLY);
  bool synced = fd >= 0 && ::fsync(fd) == 0;
  int error = errno;
  if (fd >= 0) ::close(fd);
  STRATA_CHECK(synced, "{}: cannot fsync {}: {}", path_, temporary_path_, std::strerror(error));
  STRATA_CHECK(std::rename(temporary_path_.c_str(), path_.c_str()) == 0, "{}: cannot rename {} onto it: {}", path_,
               temporary_path_, std::strerror(errno));
  committed_ = true;
  std::string folder = std::filesystem::path(path_).parent_path().string();
  int folder_fd = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY);
  if (folder_fd >= 0) {
    ::fsync(folder_fd);
    ::close(folder_fd);
  }
}

// ---------------------------------------------------------------------------

H5Reader::H5Reader(const std::string& path) : path_(path) {
  LibraryLock lock;
  std::error_code error;
  STRATA_CHECK(std::filesystem::exists(path, error), "{}: no such file", path_);
  STRATA_CHECK(!std::filesystem::is_directory(path, error), "{}: is a folder, not an HDF5 file", path_);
  htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  H5Eclear2(H5E_DEFAULT);
  STRATA_CHECK(is_hdf5 > 0, "{}: not a valid HDF5 file (no HDF5 signature)", path_);
  Hid properties(file_access_properties(), H5Pclose);
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, properties.get());
  if (file_ < 0) {
    H5Eclear2(H5E_DEFAULT);
    STRATA_FAIL("{}: not a valid HDF5 file (truncated or corrupted?)", path_);
  }
}

H5Reader::~H5Reader() {
  LibraryLock lock;
  if (file_ >= 0) H5Fclose(file_);
}

bool H5Reader::has(const std::string& name) const {
  LibraryLock lock;
  bool exists = link_exists(file_, normalize_name(path_, name));
  H5Eclear2(H5E_DEFAULT);
  return exists;
}

namespace {

void collect_datasets(hid_t group, const std::string& prefix, std::vector<std::string>& names) {
  struct Visit {
    std::string prefix;
    std::vector<std::string>* names;
    std::vector<std::string> groups;
  } visit{prefix, &names, {}};
  H5Literate(
      group, H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t parent, const char* name, const H5L_info_t*, void* data) -> herr_t {
        auto& visit = *static_cast<Visit*>(data);
        Hid object(H5Oopen(parent, name, H5P_DEFAULT), H5Oclose);
        if (!object.valid()) return 0;  // a dangling link names nothing to read
        H5I_type_t type = H5Iget_type(object.get());
        std::string full = visit.prefix + "/" + name;
        if (type == H5I_DATASET) visit.names->push_back(full);
        if (type == H5I_GROUP) visit.groups.push_back(name);
        return 0;
      },
      &visit);
  for (const std::string& child : visit.groups) {
    Hid subgroup(H5Gopen2(group, child.c_str(), H5P_DEFAULT), H5Gclose);
    if (subgroup.valid()) collect_datasets(subgroup.get(), prefix + "/" + child, names);
  }
}

// Opens a dataset, with messages for absent names and groups.
Hid open_dataset(hid_t file, const std::string& path, const std::string& name) {
  STRATA_CHECK(link_exists(file, name), "{}: {}: no such dataset", path, name);
  Hid object(H5Oopen(file, name.c_str(), H5P_DEFAULT), H5Oclose);
  STRATA_CHECK(object.valid(), "{}: {}: cannot open: {}", path, name, hdf5_detail());
  STRATA_CHECK(H5Iget_type(object.get()) == H5I_DATASET, "{}: {}: is a group, not a dataset", path, name);
  Hid dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  STRATA_CHECK(dataset.valid(), "{}: {}: cannot open: {}", path, name, hdf5_detail());
  return dataset;
}

// A single number's dataset: a scalar or one element.
void read_one_number(hid_t dataset, const std::string& path, const std::string& name, hid_t memory_type,
                     void* value) {
  Hid space(H5Dget_space(dataset), H5Sclose);
  hssize_t count = H5Sget_simple_extent_npoints(space.get());
  STRATA_CHECK(count == 1, "{}: {}: expected a single number, got {} values", path, name, count);
  STRATA_CHECK(H5Dread(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, value) >= 0, "{}: {}: cannot read: {}",
               path, name, hdf5_detail());
}

}  // namespace

std::vector<std::string> H5Reader::list(const std::string& group) const {
  LibraryLock lock;
  std::string normalized = normalize_name(path_, group);
  STRATA_CHECK(link_exists(file_, normalized), "{}: {}: no such group", path_, normalized);
  Hid handle(H5Gopen2(file_, normalized.c_str(), H5P_DEFAULT), H5Gclose);
  STRATA_CHECK(handle.valid(), "{}: {}: not a group", path_, normalized);
  std::vector<std::string> names;
  collect_datasets(handle.get(), normalized == "/" ? "" : normalized, names);
  H5Eclear2(H5E_DEFAULT);
  std::sort(names.begin(), names.end());
  return names;
}

Tensor H5Reader::read_tensor(const std::string& name) const {
  LibraryLock lock;
  const std::string normalized = normalize_name(path_, name);
  Hid dataset = open_dataset(file_, path_, normalized);
  Hid type(H5Dget_type(dataset.get()), H5Tclose);
  const H5T_class_t type_class = H5Tget_class(type.get());
  const size_t size = H5Tget_size(type.get());
  const bool is_signed = H5Tget_sign(type.get()) != H5T_SGN_NONE;
  const std::string stored = describe_type(type.get());

  // The dtype to return and the memory type HDF5 converts into.
  DType dtype;
  hid_t memory_type = -1;
  Hid raw_copy(-1, H5Tclose);  // reads the stored bytes unconverted (float16, enums)
  const std::string strata_dtype = attribute_string(dataset.get(), kDtypeAttribute);
  if (!strata_dtype.empty()) {
    dtype = with_context(fmt::format("reading {}: {}", path_, normalized), [&] { return parse_dtype(strata_dtype); });
    StorageType expected = storage_type(dtype);
    STRATA_CHECK(H5Tequal(type.get(), expected.file_type) > 0,
                 "{}: {}: its strata_dtype attribute says {} but the data is stored as {}", path_, normalized,
                 strata_dtype, stored);
    memory_type = expected.memory_type;
  } else if (type_class == H5T_FLOAT && (size == 4 || size == 8)) {
    dtype = size == 4 ? DType::Float32 : DType::Float64;
    memory_type = size == 4 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE;
  } else if (type_class == H5T_FLOAT && size == 2) {  // numpy's float16 (IEEE binary16)
    STRATA_CHECK(H5Tget_order(type.get()) == H5T_ORDER_LE, "{}: {}: big-endian float16 is not supported", path_,
                 normalized);
    dtype = DType::Float16;
    raw_copy = Hid(H5Tcopy(type.get()), H5Tclose);
    memory_type = raw_copy.get();
  } else if (type_class == H5T_INTEGER) {
    if (size == 4 && is_signed) {
      dtype = DType::Int32;
      memory_type = H5T_NATIVE_INT32;
    } else if (size == 1 && !is_signed) {
      dtype = DType::UInt8;
      memory_type = H5T_NATIVE_UINT8;
    } else {  // int8, int16, uint16, uint32, int64, uint64: widened (or clipped) to int64
      dtype = DType::Int64;
      memory_type = H5T_NATIVE_INT64;
    }
  } else if (type_class == H5T_ENUM && size == 1) {  // h5py's bool: an enum {FALSE = 0, TRUE = 1} over int8
    dtype = DType::Bool;
    raw_copy = Hid(H5Tcopy(type.get()), H5Tclose);
    memory_type = raw_copy.get();
  } else {
    STRATA_FAIL("{}: {}: holds {}, not a tensor", path_, normalized, stored);
  }

  Hid space(H5Dget_space(dataset.get()), H5Sclose);
  Shape shape = dataspace_shape(space.get());
  Tensor tensor = Tensor::empty(shape, dtype);
  if (tensor.numel() > 0) {
    STRATA_CHECK(H5Dread(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, tensor.data_ptr()) >= 0,
                 "{}: {}: cannot read {} (truncated or corrupted?): {}", path_, normalized, tensor.str(),
                 hdf5_detail());
  }
  return tensor;
}

std::string H5Reader::read_string(const std::string& name) const {
  LibraryLock lock;
  const std::string normalized = normalize_name(path_, name);
  Hid dataset = open_dataset(file_, path_, normalized);
  Hid type(H5Dget_type(dataset.get()), H5Tclose);
  STRATA_CHECK(H5Tget_class(type.get()) == H5T_STRING, "{}: {}: holds {}, not a string", path_, normalized,
               describe_type(type.get()));
  Hid space(H5Dget_space(dataset.get()), H5Sclose);
  STRATA_CHECK(H5Sget_simple_extent_npoints(space.get()) == 1, "{}: {}: holds several strings, not one", path_,
               normalized);
  if (H5Tis_variable_str(type.get()) > 0) {  // as h5py writes Python strings
    Hid memory_type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(memory_type.get(), H5T_VARIABLE);
    H5Tset_cset(memory_type.get(), H5Tget_cset(type.get()));
    char* text = nullptr;
    STRATA_CHECK(H5Dread(dataset.get(), memory_type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &text) >= 0,
                 "{}: {}: cannot read: {}", path_, normalized, hdf5_detail());
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  std::string value(H5Tget_size(type.get()), '\0');
  STRATA_CHECK(H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, value.data()) >= 0,
               "{}: {}: cannot read: {}", path_, normalized, hdf5_detail());
  if (H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD) {
    value.erase(value.find_last_not_of(' ') + 1);
  } else if (H5Tget_strpad(type.get()) == H5T_STR_NULLTERM) {
    value.erase(std::min(value.find('\0'), value.size()));
  } else {
    value.erase(value.find_last_not_of('\0') + 1);
  }
  return value;
}

int64_t H5Reader::read_int(const std::string& name) const {
  LibraryLock lock;
  const std::string normalized = normalize_name(path_, name);
  Hid dataset = open_dataset(file_, path_, normalized);
  Hid type(H5Dget_type(dataset.get()), H5Tclose);
  STRATA_CHECK(H5Tget_class(type.get()) == H5T_INTEGER, "{}: {}: holds {}, not an integer", path_, normalized,
               describe_type(type.get()));
  int64_t value = 0;
  read_one_number(dataset.get(), path_, normalized, H5T_NATIVE_INT64, &value);
  return value;
}

double H5Reader::read_double(const std::string& name) const {
  LibraryLock lock;
  const std::string normalized = normalize_name(path_, name);
  Hid dataset = open_dataset(file_, path_, normalized);
  Hid type(H5Dget_type(dataset.get()), H5Tclose);
  H5T_class_t type_class = H5Tget_class(type.get());
  STRATA_CHECK(type_class == H5T_FLOAT || type_class == H5T_INTEGER, "{}: {}: holds {}, not a number", path_,
               normalized, describe_type(type.get()));
  double value = 0;
  read_one_number(dataset.get(), path_, normalized, H5T_NATIVE_DOUBLE, &value);
  return value;
}

}  // namespace strata::checkpoint
