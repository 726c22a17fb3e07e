// Byte corpora: preparation (text file or the `bible` program -> train.bin, val.bin,
// meta.json) and the memory-mapped window dataset over them.
#include "strata/data/corpus.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>

#include "strata/core/error.h"

namespace strata::data {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "strata-byte-corpus";
constexpr int kFormatVersion = 1;
constexpr int64_t kKingJamesVerses = 31102;

// Writes `bytes` to `path` through a temporary file that is fsynced and renamed.
void write_file_atomically(const fs::path& path, std::string_view bytes) {
  const std::string temporary = fmt::format("{}.tmp-{}", path.string(), static_cast<long>(getpid()));
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  STRATA_CHECK(fd >= 0, "{}: cannot create: {}", temporary, std::strerror(errno));
  size_t written = 0;
  while (written < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int error = errno;
      ::close(fd);
      ::unlink(temporary.c_str());
      STRATA_FAIL("{}: cannot write: {}", temporary, std::strerror(error));
    }
    written += static_cast<size_t>(n);
  }
  bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || std::rename(temporary.c_str(), path.c_str()) != 0) {
    int error = errno;
    ::unlink(temporary.c_str());
    STRATA_FAIL("{}: cannot write: {}", path.string(), std::strerror(error));
  }
}

CorpusSummary write_byte_corpus(std::string_view text, const std::string& output_dir, double validation_fraction,
                                const std::string& source) {
  STRATA_CHECK(validation_fraction > 0 && validation_fraction < 1,
               "{}: the validation fraction must be in (0, 1), got {}", source, validation_fraction);
  const int64_t total = static_cast<int64_t>(text.size());
  const int64_t val_bytes = std::llround(static_cast<double>(total) * validation_fraction);
  const int64_t train_bytes = total - val_bytes;
  STRATA_CHECK(val_bytes >= 2 && train_bytes >= 2,
               "{}: {} bytes of text is too little to split into train and validation ({} for validation)", source,
               total, validation_fraction);
  std::error_code error;
  fs::create_directories(output_dir, error);
  STRATA_CHECK(!error, "{}: cannot create the folder: {}", output_dir, error.message());
  const fs::path folder(output_dir);
  write_file_atomically(folder / "train.bin", text.substr(0, train_bytes));
  write_file_atomically(folder / "val.bin", text.substr(train_bytes));
  nlohmann::json meta{{"format", kFormat},        {"version", kFormatVersion},   {"source", source},
                      {"train_bytes", train_bytes}, {"val_bytes", val_bytes}, {"vocab_size", 256}};
  write_file_atomically(folder / "meta.json", meta.dump(2) + "\n");  // last: the corpus is complete
  return CorpusSummary{output_dir, train_bytes, val_bytes};
}

// The absolute path of `name` found on PATH, or "" when it is not there.
std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream folders(path ? path : "");
  for (std::string folder; std::getline(folders, folder, ':');) {
    if (folder.empty()) continue;
    fs::path candidate = fs::path(folder) / name;
    if (::access(candidate.c_str(), X_OK) == 0 && !fs::is_directory(candidate)) return candidate.string();
  }
  return "";
}

// "Ge1:1", "1Chr12:3", "SSol2:1": an optional book number, letters, chapter:verse.
bool is_verse_reference(std::string_view reference) {
  size_t i = 0;
  if (i < reference.size() && reference[i] >= '1' && reference[i] <= '3') ++i;
  size_t letters = i;
  while (i < reference.size() && std::isalpha(static_cast<unsigned char>(reference[i]))) ++i;
  if (i == letters) return false;
  size_t chapter = i;
  while (i < reference.size() && std::isdigit(static_cast<unsigned char>(reference[i]))) ++i;
  if (i == chapter || i == reference.size() || reference[i] != ':') return false;
  size_t verse = ++i;
  while (i < reference.size() && std::isdigit(static_cast<unsigned char>(reference[i]))) ++i;
  return i > verse && i == reference.size();
}

// A memory-mapped, read-only file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    STRATA_CHECK(fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
    struct stat info {};
    ::fstat(fd, &info);
    size_ = static_cast<size_t>(info.st_size);
    if (size_ > 0) {
      void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      int error = errno;
      ::close(fd);
      STRATA_CHECK(mapped != MAP_FAILED, "{}: cannot map into memory: {}", path, std::strerror(error));
      data_ = static_cast<const uint8_t*>(mapped);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class ByteCorpus final : public Dataset {
 public:
  ByteCorpus(const std::string& path, std::string name, Split split, int64_t seq_len)
      : file_(path), name_(std::move(name)), split_(split), seq_len_(seq_len) {
    const int64_t bytes = static_cast<int64_t>(file_.size());
    STRATA_CHECK(bytes >= seq_len + 1, "{}: {} bytes cannot hold one window of seq_len {} (plus its next byte)",
                 path, bytes, seq_len);
    // Every offset o with o + T + 1 <= bytes for training; whole windows for validation.
    size_ = split == Split::Train ? bytes - seq_len : (bytes - 1) / seq_len;
  }

  int64_t size() const override { return size_; }
  Example example(int64_t index) const override {
    STRATA_CHECK(index >= 0 && index < size_, "{} {}: window {} out of range [0, {})", name_, split_name(split_),
                 index, size_);
    const int64_t offset = split_ == Split::Train ? index : index * seq_len_;
    const uint8_t* bytes = file_.data() + offset;
    Example example;
    example.inputs.assign(bytes, bytes + seq_len_);
    example.targets.assign(bytes + 1, bytes + seq_len_ + 1);
    return example;
  }
  ExampleShape example_shape() const override { return {{seq_len_}, DType::Int64, {seq_len_}}; }
  int64_t num_classes() const override { return 256; }
  std::string description() const override {
    return fmt::format("{} {}: {} bytes, {} windows of {}", name_, split_name(split_), file_.size(), size_, seq_len_);
  }

 private:
  MappedFile file_;
  std::string name_;
  Split split_;
  int64_t seq_len_;
  int64_t size_ = 0;
};

}  // namespace

CorpusSummary prepare_text_corpus(const std::string& input_text_path, const std::string& output_dir,
                                  double validation_fraction) {
  std::ifstream in(input_text_path, std::ios::binary);
  STRATA_CHECK(in.good(), "{}: no such file (or it cannot be read)", input_text_path);
  std::ostringstream text;
  text << in.rdbuf();
  return write_byte_corpus(text.str(), output_dir, validation_fraction, input_text_path);
}

std::string bible_kjv_text() {
  const std::string program = find_program("bible");
  STRATA_CHECK(!program.empty(),
               "the program `bible` was not found on PATH: install the Debian package bible-kjv "
               "(apt-get install bible-kjv)");
  const std::string command = "'" + program + "' -f 'Genesis 1:1-Revelation 22:21'";
  FILE* pipe = ::popen(command.c_str(), "r");
  STRATA_CHECK(pipe != nullptr, "cannot run `{}`: {}", command, std::strerror(errno));
  std::string output;
  char buffer[1 << 16];
  for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
  int status = ::pclose(pipe);
  STRATA_CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "`{}` failed (exit status {})", command,
               WIFEXITED(status) ? WEXITSTATUS(status) : status);

  std::string text;
  text.reserve(output.size());
  std::istringstream lines(output);
  int64_t verses = 0, line_number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_number;
    if (line.empty()) continue;
    size_t space = line.find(' ');
    STRATA_CHECK(space != std::string::npos && is_verse_reference(std::string_view(line).substr(0, space)),
                 "`{}`: line {} does not start with a verse reference like 'Ge1:1 ': '{}'", command, line_number,
                 line.substr(0, 60));
    text.append(line, space + 1, std::string::npos);
    text += '\n';
    ++verses;
  }
  STRATA_CHECK(verses == kKingJamesVerses, "`{}` printed {} verses; the King James Bible has {}", command, verses,
               kKingJamesVerses);
  return text;
}

CorpusSummary prepare_bible_kjv(const std::string& output_dir, double validation_fraction) {
  return write_byte_corpus(bible_kjv_text(), output_dir, validation_fraction, "bible-kjv (Genesis 1:1-Revelation 22:21)");
}

std::shared_ptr<const Dataset> open_byte_corpus(const std::string& folder, Split split, int64_t seq_len,
                                                const std::string& name, const std::string& prepare_command) {
  STRATA_CHECK(seq_len > 0, "{}: seq_len must be positive, got {}", name, seq_len);
  const fs::path bin = fs::path(folder) / (split == Split::Train ? "train.bin" : "val.bin");
  const fs::path meta_path = fs::path(folder) / "meta.json";
  for (const fs::path& file : {bin, meta_path}) {
    STRATA_CHECK(fs::exists(file), "{}: no such file; make it with `{}`", file.string(), prepare_command);
  }
  nlohmann::json meta;
  try {
    std::ifstream in(meta_path);
    meta = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    STRATA_FAIL("{}: not valid JSON ({}); make the corpus again with `{}`", meta_path.string(), e.what(),
                prepare_command);
  }
  STRATA_CHECK(meta.value("format", "") == kFormat && meta.value("version", 0) == kFormatVersion,
               "{}: not a strata byte corpus (format {} version {}); make it again with `{}`", meta_path.string(),
               kFormat, kFormatVersion, prepare_command);
  const int64_t recorded = meta.value(split == Split::Train ? "train_bytes" : "val_bytes", int64_t{-1});
  const int64_t actual = static_cast<int64_t>(fs::file_size(bin));
  STRATA_CHECK(actual == recorded, "{}: {} bytes, but meta.json says {}; make the corpus again with `{}`",
               bin.string(), actual, recorded, prepare_command);
  return std::make_shared<ByteCorpus>(bin.string(), name, split, seq_len);
}

}  // namespace strata::data
