// Recipes: yaml-cpp parses each file; the values are copied into a small tree of
// our own (Node) that keeps the file and line each value came from, because
// includes and overrides merge values from several sources and every message must
// still point at the one that is wrong.
#include "strata/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>

#include "strata/core/error.h"

namespace strata::config {

namespace fs = std::filesystem;

namespace {

constexpr const char* kCommandLine = "command line";

struct Source {
  std::string file;
  int line = 0;  // 1-based; 0 when the value has no line (command line)
};

std::string where(const Source& source) {
  return source.line > 0 ? fmt::format("{}:{}", source.file, source.line) : source.file;
}

struct Node {
  enum class Kind { Null, Scalar, List, Map };
  Kind kind = Kind::Null;
  std::string text;               // Scalar: the value as written
  bool quoted = false;            // Scalar: written in quotes, so always a string
  std::vector<std::string> keys;  // Map: keys in document order, parallel to children
  std::vector<Node> children;     // Map values or List elements
  Source source;

  Node* child(const std::string& key) {
    auto it = std::find(keys.begin(), keys.end(), key);
    return it == keys.end() ? nullptr : &children[it - keys.begin()];
  }
  const Node* child(const std::string& key) const { return const_cast<Node*>(this)->child(key); }
};

std::string describe(const Node& node) {
  switch (node.kind) {
    case Node::Kind::Null: return "null";
    case Node::Kind::Map: return "a map";
    case Node::Kind::List: return "a list";
    case Node::Kind::Scalar: break;
  }
  return "'" + node.text + "'";
}

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  if (path.empty()) return parts;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

std::optional<size_t> parse_index(const std::string& text) {
  size_t index = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), index);
  if (error != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return index;
}

// ---------------------------------------------------------------------------
// Building the tree from yaml-cpp nodes.

int line_of(const YAML::Node& node, int fallback) {
  YAML::Mark mark = node.Mark();
  return mark.line >= 0 ? mark.line + 1 : fallback;
}

Node convert(const YAML::Node& yaml, const Source& source, const std::string& path) {
  Node node;
  node.source = source;
  switch (yaml.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      break;
    case YAML::NodeType::Scalar:
      node.kind = Node::Kind::Scalar;
      node.text = yaml.Scalar();
      node.quoted = yaml.Tag() == "!";
      break;
    case YAML::NodeType::Sequence:
      node.kind = Node::Kind::List;
      for (size_t i = 0; i < yaml.size(); ++i) {
        Source element_source{source.file, source.line ? line_of(yaml[i], source.line) : 0};
        node.children.push_back(convert(yaml[i], element_source, join_path(path, std::to_string(i))));
      }
      break;
    case YAML::NodeType::Map:
      node.kind = Node::Kind::Map;
      for (auto it = yaml.begin(); it != yaml.end(); ++it) {
        Source key_source{source.file, source.line ? line_of(it->first, source.line) : 0};
        STRATA_CHECK(it->first.IsScalar(), "{}: keys must be plain names, got {} under {}", where(key_source),
                     it->first.IsMap() ? "a map" : "a list", path.empty() ? "the top level" : path);
        const std::string key = it->first.Scalar();
        const std::string key_path = join_path(path, key);
        STRATA_CHECK(!key.empty() && key.find('.') == std::string::npos,
                     "{}: key '{}' cannot be addressed by a dotted path (keys are non-empty and have no dots)",
                     where(key_source), key_path);
        if (const Node* first = node.child(key))
          STRATA_FAIL("{}: duplicate key {} (first given at {})", where(key_source), key_path, where(first->source));
        node.keys.push_back(key);
        node.children.push_back(convert(it->second, key_source, key_path));
      }
      break;
  }
  return node;
}

YAML::Node parse_yaml(const std::string& text, const std::string& name) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    STRATA_FAIL("{}:{}:{}: YAML syntax error: {}", name, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
}

// Maps merge key by key, recursively; anything else replaces.
void merge_into(Node& target, const Node& source) {
  if (target.kind != Node::Kind::Map || source.kind != Node::Kind::Map) {
    target = source;
    return;
  }
  for (size_t i = 0; i < source.keys.size(); ++i) {
    if (Node* existing = target.child(source.keys[i])) {
      merge_into(*existing, source.children[i]);
    } else {
      target.keys.push_back(source.keys[i]);
      target.children.push_back(source.children[i]);
    }
  }
}

// ---------------------------------------------------------------------------
// Files and includes.

struct IncludeFrame {
  std::string identity;  // canonical path, for cycle detection
  std::string name;      // as shown to the user
};

std::string display_name(const fs::path& path) { return path.lexically_normal().generic_string(); }

std::string read_text_file(const fs::path& path, const std::string& included_from) {
  std::string suffix = included_from.empty() ? "" : " (included from " + included_from + ")";
  std::error_code error;
  STRATA_CHECK(fs::exists(path, error), "{}: no such file{}", display_name(path), suffix);
  STRATA_CHECK(!fs::is_directory(path, error), "{}: is a folder, not a recipe file{}", display_name(path), suffix);
  std::ifstream in(path, std::ios::binary);
  STRATA_CHECK(in.good(), "{}: cannot be read{}", display_name(path), suffix);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

Node load_document(const std::string& text, const fs::path& path, const std::string& name,
                   std::vector<IncludeFrame>& chain);

Node load_file(const fs::path& path, const std::string& included_from, std::vector<IncludeFrame>& chain) {
  const std::string name = display_name(path);
  return load_document(read_text_file(path, included_from), path, name, chain);
}

// `path` locates the document for resolving its includes; `name` is what messages show.
Node load_document(const std::string& text, const fs::path& path, const std::string& name,
                   std::vector<IncludeFrame>& chain) {
  YAML::Node yaml = parse_yaml(text, name);
  Node own = convert(yaml, Source{name, 1}, "");
  if (own.kind == Node::Kind::Null) own.kind = Node::Kind::Map;  // an empty file
  STRATA_CHECK(own.kind == Node::Kind::Map, "{}:{}: a recipe is a map of keys, got {}", name,
               line_of(yaml, 1), describe(own));

  Node* include = own.child("include");
  if (include == nullptr) return own;

  std::vector<Node> names;
  if (include->kind == Node::Kind::Scalar) {
    names.push_back(*include);
  } else if (include->kind == Node::Kind::List) {
    names = include->children;
  }
  const bool well_formed =
      (include->kind == Node::Kind::Scalar || include->kind == Node::Kind::List) &&
      std::all_of(names.begin(), names.end(), [](const Node& n) { return n.kind == Node::Kind::Scalar; });
  STRATA_CHECK(well_formed, "{}: include: expected a file name or a list of file names, got {}",
               where(include->source), describe(*include));

  std::error_code error;
  Node merged;
  merged.kind = Node::Kind::Map;
  merged.source = own.source;
  for (const Node& entry : names) {
    fs::path included = fs::path(entry.text).is_absolute() ? fs::path(entry.text) : path.parent_path() / entry.text;
    std::string identity = fs::weakly_canonical(included, error).string();
    if (error) identity = display_name(included);
    auto cycle_start = std::find_if(chain.begin(), chain.end(),
                                    [&](const IncludeFrame& frame) { return frame.identity == identity; });
    if (cycle_start != chain.end()) {
      std::string cycle;
      for (auto it = cycle_start; it != chain.end(); ++it) cycle += it->name + " -> ";
      STRATA_FAIL("{}: include cycle: {}{}", where(entry.source), cycle, display_name(included));
    }
    chain.push_back({identity, display_name(included)});
    merge_into(merged, load_file(included, where(entry.source), chain));
    chain.pop_back();
  }
  // The including file's own keys go on top.
  size_t include_index = static_cast<size_t>(include - own.children.data());
  own.keys.erase(own.keys.begin() + include_index);
  own.children.erase(own.children.begin() + include_index);
  merge_into(merged, own);
  return merged;
}

// ---------------------------------------------------------------------------
// Overrides.

void apply_override(Node& root, const std::string& path, const std::string& yaml_value) {
  const std::string shown = path + "=" + yaml_value;
  std::vector<std::string> parts = split_path(path);
  STRATA_CHECK(!parts.empty() && std::none_of(parts.begin(), parts.end(), [](auto& p) { return p.empty(); }),
               "{}: '{}': the key path must be non-empty dotted names (train.steps=200)", kCommandLine, shown);
  YAML::Node yaml;
  try {
    yaml = YAML::Load(yaml_value);
  } catch (const YAML::Exception& e) {
    STRATA_FAIL("{}: {}: YAML syntax error: {}", kCommandLine, shown, e.msg);
  }
  const Source source{kCommandLine, 0};
  Node value = convert(yaml, source, path);

  Node* node = &root;
  std::string walked;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    const bool last = i + 1 == parts.size();
    Node* next = nullptr;
    if (node->kind == Node::Kind::Null) {  // a null (unset) value becomes a map when a key is set below it
      node->kind = Node::Kind::Map;
      node->source = source;
    }
    if (node->kind == Node::Kind::Map) {
      next = node->child(part);
      if (next == nullptr) {
        node->keys.push_back(part);
        Node created;
        created.source = source;
        created.kind = last ? Node::Kind::Null : Node::Kind::Map;
        node->children.push_back(created);
        next = &node->children.back();
      }
    } else if (node->kind == Node::Kind::List) {
      std::optional<size_t> index = parse_index(part);
      STRATA_CHECK(index && *index < node->children.size(),
                   "{}: {}: {} is a list of {} elements at {}, so '{}' is not an element of it", kCommandLine,
                   shown, walked, node->children.size(), where(node->source), part);
      next = &node->children[*index];
    } else {
      STRATA_FAIL("{}: {}: {} is the value {} at {}, not a map", kCommandLine, shown, walked, describe(*node),
                  where(node->source));
    }
    walked = join_path(walked, part);
    node = next;
  }
  merge_into(*node, value);
}

// ---------------------------------------------------------------------------
// Reading values.

// What a getter of T expects, for messages.
template <class T>
constexpr const char* expected_text() {
  if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_integral_v<T>) return "an integer";
  else if constexpr (std::is_floating_point_v<T>) return "a number";
  else return "a string";
}

[[noreturn]] void fail_expected(const Node& node, const std::string& path, const std::string& expected) {
  STRATA_FAIL("{}: {}: expected {}, got {}", where(node.source), path, expected, describe(node));
}

// For a number of the right type outside its range: "expected a positive integer, got -4".
[[noreturn]] void fail_out_of_range(const Node& node, const std::string& path, const std::string& expected) {
  STRATA_FAIL("{}: {}: expected {}, got {}", where(node.source), path, expected, node.text);
}

std::optional<bool> parse_bool(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  if (text == "true" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "no" || text == "off") return false;
  return std::nullopt;
}

std::optional<double> parse_double(std::string text) {
  if (!text.empty() && text[0] == '+') text.erase(0, 1);
  std::string lower = text;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower == ".inf") return std::numeric_limits<double>::infinity();
  if (lower == "-.inf") return -std::numeric_limits<double>::infinity();
  if (lower == ".nan") return std::numeric_limits<double>::quiet_NaN();
  if (text.empty() || std::isalpha(static_cast<unsigned char>(text.back()))) return std::nullopt;  // "inf", "nan"
  double value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Integers may be written in decimal, as 0x hexadecimal, or in exponent form when
// the value is a whole number (steps: 1e5).
std::optional<int64_t> parse_int64(std::string text) {
  if (!text.empty() && text[0] == '+') text.erase(0, 1);
  bool negative = !text.empty() && text[0] == '-';
  std::string digits = negative ? text.substr(1) : text;
  int base = 10;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    digits = digits.substr(2);
    base = 16;
  }
  uint64_t magnitude = 0;
  auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), magnitude, base);
  if (!digits.empty() && error == std::errc() && end == digits.data() + digits.size()) {
    constexpr uint64_t kLimit = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    if (magnitude <= kLimit) return negative ? -static_cast<int64_t>(magnitude) : static_cast<int64_t>(magnitude);
    if (negative && magnitude == kLimit + 1) return std::numeric_limits<int64_t>::min();
    return std::nullopt;
  }
  std::optional<double> real = parse_double(text);
  if (real && std::isfinite(*real) && std::floor(*real) == *real && std::fabs(*real) < 9.2e18)
    return static_cast<int64_t>(*real);
  return std::nullopt;
}

template <class T>
T scalar_value(const Node& node, const std::string& path) {
  if (node.kind != Node::Kind::Scalar) fail_expected(node, path, expected_text<T>());
  if constexpr (std::is_same_v<T, std::string>) {
    return node.text;
  } else if constexpr (std::is_same_v<T, bool>) {
    if (auto value = parse_bool(node.text)) return *value;
  } else if constexpr (std::is_same_v<T, double>) {
    if (auto value = parse_double(node.text)) return *value;
  } else {
    std::optional<int64_t> value = parse_int64(node.text);
    if (value && *value >= std::numeric_limits<T>::min() && *value <= std::numeric_limits<T>::max())
      return static_cast<T>(*value);
    if (value)
      fail_expected(node, path,
                    fmt::format("an integer in [{}, {}]", std::numeric_limits<T>::min(), std::numeric_limits<T>::max()));
  }
  fail_expected(node, path, expected_text<T>());
}

template <class T>
struct IsVector : std::false_type {};
template <class E>
struct IsVector<std::vector<E>> : std::true_type {};

template <class T>
T node_value(const Node& node, const std::string& path) {
  if constexpr (IsVector<T>::value) {
    using Element = typename T::value_type;
    if (node.kind != Node::Kind::List)
      fail_expected(node, path, fmt::format("a list of {}",
                                            std::is_same_v<Element, std::string> ? "strings"
                                            : std::is_same_v<Element, double>    ? "numbers"
                                                                                 : "integers"));
    T values;
    for (size_t i = 0; i < node.children.size(); ++i)
      values.push_back(scalar_value<Element>(node.children[i], fmt::format("{}[{}]", path, i)));
    return values;
  } else {
    return scalar_value<T>(node, path);
  }
}

// Optimal-string-alignment distance: edits, plus swaps of neighbours (d_stae -> d_state is 1).
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t substitution = d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, substitution});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// The closest candidate that is plausibly a misspelling of `word`: at most
// max(2, length / 3) edits away, the length being that of the last dotted part
// (so blocks.1.size is not taken for blocks.1.kind); failing that, the shortest
// candidate that `word` begins.
std::optional<std::string> closest(const std::string& word, const std::vector<std::string>& candidates) {
  size_t last_part = word.size() - (word.rfind('.') == std::string::npos ? 0 : word.rfind('.') + 1);
  std::optional<std::string> best;
  size_t best_distance = std::max<size_t>(2, last_part / 3) + 1;
  for (const std::string& candidate : candidates) {
    size_t distance = edit_distance(word, candidate);
    if (distance < best_distance) best = candidate, best_distance = distance;
  }
  if (best || word.size() < 3) return best;
  // A shortened name: "bible" for bible_kjv.
  for (const std::string& candidate : candidates)
    if (candidate.rfind(word, 0) == 0 && (!best || candidate.size() < best->size())) best = candidate;
  return best;
}

template <class T>
std::string range_description(T low, T high) {
  return fmt::format("{} in [{}, {}]", std::is_floating_point_v<T> ? "a number" : "an integer", low, high);
}

}  // namespace

// ---------------------------------------------------------------------------

struct Document {
  Node root;
};

namespace {
// Where a dotted path leads: the node, or the scalar that stops the walk.
struct Lookup {
  const Node* node = nullptr;     // null when absent
  const Node* blocker = nullptr;  // a scalar met before the path ended
  std::string blocker_path;
};

Lookup find_path(const Node& root, const std::string& path) {
  Lookup lookup;
  const Node* node = &root;
  std::string walked;
  for (const std::string& part : split_path(path)) {
    const Node* next = nullptr;
    if (node->kind == Node::Kind::Map) {
      next = node->child(part);
    } else if (node->kind == Node::Kind::List) {
      std::optional<size_t> index = parse_index(part);
      if (index && *index < node->children.size()) next = &node->children[*index];
    } else if (node->kind == Node::Kind::Scalar) {
      lookup.blocker = node;
      lookup.blocker_path = walked;
      return lookup;
    }
    if (next == nullptr) return lookup;
    walked = join_path(walked, part);
    node = next;
  }
  lookup.node = node->kind == Node::Kind::Null ? nullptr : node;
  return lookup;
}

// The node at `path`, or null when absent; throws when a scalar stands where a map should be.
const Node* find_value(const Node& root, const std::string& path) {
  Lookup lookup = find_path(root, path);
  if (lookup.blocker) {
    STRATA_FAIL("{}: {}: expected a map holding {}, got {}", where(lookup.blocker->source), lookup.blocker_path,
                path.substr(lookup.blocker_path.size() + 1), describe(*lookup.blocker));
  }
  return lookup.node;
}
}  // namespace

Config::Config() : document_(std::make_unique<Document>()) { document_->root.kind = Node::Kind::Map; }
Config::~Config() = default;
Config::Config(const Config& other)
    : document_(std::make_unique<Document>(*other.document_)), name_(other.name_), read_paths_(other.read_paths_) {}
Config& Config::operator=(const Config& other) {
  if (this != &other) {
    document_ = std::make_unique<Document>(*other.document_);
    name_ = other.name_;
    read_paths_ = other.read_paths_;
  }
  return *this;
}
Config::Config(Config&&) noexcept = default;
Config& Config::operator=(Config&&) noexcept = default;
Config::Config(std::unique_ptr<Document> document, std::string name)
    : document_(std::move(document)), name_(std::move(name)) {}

Config Config::load(const std::string& path, const std::vector<std::string>& overrides) {
  std::vector<IncludeFrame> chain;
  std::error_code error;
  std::string identity = fs::weakly_canonical(path, error).string();
  chain.push_back({error ? path : identity, display_name(path)});
  auto document = std::make_unique<Document>();
  document->root = load_file(path, "", chain);
  Config config(std::move(document), display_name(path));
  for (const std::string& override_text : overrides) {
    size_t equals = override_text.find('=');
    STRATA_CHECK(equals != std::string::npos, "{}: '{}' is not an override of the form key.path=value", kCommandLine,
                 override_text);
    apply_override(config.document_->root, override_text.substr(0, equals), override_text.substr(equals + 1));
  }
  return config;
}

Config Config::from_yaml_string(const std::string& text, const std::string& name) {
  std::error_code error;
  std::string identity = fs::weakly_canonical(name, error).string();
  std::vector<IncludeFrame> chain{{error ? name : identity, name}};
  auto document = std::make_unique<Document>();
  document->root = load_document(text, fs::path(name), name, chain);
  return Config(std::move(document), name);
}

template <class T>
T Config::get(const std::string& path) const {
  read_paths_.insert(path);
  const Node* node = find_value(document_->root, path);
  if (node == nullptr) STRATA_FAIL("{}: {}: required key is missing", name_, path);
  return node_value<T>(*node, path);
}

template <class T>
T Config::get(const std::string& path, const T& fallback) const {
  read_paths_.insert(path);
  const Node* node = find_value(document_->root, path);
  return node == nullptr ? fallback : node_value<T>(*node, path);
}

template <class T>
T Config::get_positive(const std::string& path) const {
  T value = get<T>(path);
  const Node* node = find_value(document_->root, path);
  if (!(value > 0))
    fail_out_of_range(*node, path, std::is_floating_point_v<T> ? "a positive number" : "a positive integer");
  return value;
}

template <class T>
T Config::get_positive(const std::string& path, const T& fallback) const {
  return has(path) ? get_positive<T>(path) : fallback;
}

template <class T>
T Config::get_in_range(const std::string& path, T low, T high) const {
  T value = get<T>(path);
  const Node* node = find_value(document_->root, path);
  if (!(value >= low && value <= high)) fail_out_of_range(*node, path, range_description(low, high));
  return value;
}

template <class T>
T Config::get_in_range(const std::string& path, T low, T high, const T& fallback) const {
  return has(path) ? get_in_range<T>(path, low, high) : fallback;
}

std::string Config::get_choice(const std::string& path, const std::vector<std::string>& choices) const {
  std::string value = get<std::string>(path);
  if (std::find(choices.begin(), choices.end(), value) != choices.end()) return value;
  std::optional<std::string> suggestion = closest(value, choices);
  STRATA_FAIL("{}: {}: expected one of {}, got '{}'{}", where(find_value(document_->root, path)->source), path,
              fmt::join(choices, ", "), value, suggestion ? fmt::format(" (did you mean {}?)", *suggestion) : "");
}

std::string Config::get_choice(const std::string& path, const std::vector<std::string>& choices,
                               const std::string& fallback) const {
  return has(path) ? get_choice(path, choices) : fallback;
}

bool Config::has(const std::string& path) const {
  read_paths_.insert(path);
  return find_path(document_->root, path).node != nullptr;
}

std::vector<std::string> Config::keys(const std::string& path) const {
  if (!path.empty()) read_paths_.insert(path);
  const Node* node = path.empty() ? &document_->root : find_value(document_->root, path);
  if (node == nullptr) return {};
  std::vector<std::string> names;
  if (node->kind == Node::Kind::Map) {
    names = node->keys;
  } else if (node->kind == Node::Kind::List) {
    for (size_t i = 0; i < node->children.size(); ++i) names.push_back(std::to_string(i));
  } else {
    fail_expected(*node, path, "a map");
  }
  for (const std::string& name : names) read_paths_.insert(join_path(path, name));
  return names;
}

void Config::set(const std::string& path, const std::string& yaml_value) {
  apply_override(document_->root, path, yaml_value);
}

void Config::check_all_read() const {
  struct Unread {
    std::string path;
    Source source;
  };
  auto was_read_below = [&](const std::string& path) {
    auto it = read_paths_.lower_bound(path + ".");
    return it != read_paths_.end() && it->rfind(path + ".", 0) == 0;
  };
  // Depth-first in document order; maps are containers, every other value is a key of its own.
  std::function<std::optional<Unread>(const Node&, const std::string&)> first_unread =
      [&](const Node& node, const std::string& path) -> std::optional<Unread> {
    if (node.kind != Node::Kind::Map && read_paths_.count(path)) return std::nullopt;
    if (node.kind == Node::Kind::Map && !node.keys.empty()) {
      for (size_t i = 0; i < node.keys.size(); ++i)
        if (auto unread = first_unread(node.children[i], join_path(path, node.keys[i]))) return unread;
      return std::nullopt;
    }
    if (node.kind == Node::Kind::List && !node.children.empty() && was_read_below(path)) {
      for (size_t i = 0; i < node.children.size(); ++i)
        if (auto unread = first_unread(node.children[i], join_path(path, std::to_string(i)))) return unread;
      return std::nullopt;
    }
    if (path.empty() || read_paths_.count(path)) return std::nullopt;
    return Unread{path, node.source};
  };
  std::optional<Unread> unread = first_unread(document_->root, "");
  if (!unread) return;
  std::vector<std::string> candidates;
  for (const std::string& read : read_paths_)
    if (unread->path.rfind(read + ".", 0) != 0) candidates.push_back(read);  // not an enclosing map
  std::optional<std::string> suggestion = closest(unread->path, candidates);
  STRATA_FAIL("{}: unknown key {}{}", where(unread->source), unread->path,
              suggestion ? fmt::format(" (did you mean {}?)", *suggestion) : "");
}

namespace {
void emit(YAML::Emitter& out, const Node& node) {
  switch (node.kind) {
    case Node::Kind::Null:
      out << YAML::Null;
      break;
    case Node::Kind::Scalar:
      if (node.quoted) out << YAML::DoubleQuoted;
      out << node.text;
      break;
    case Node::Kind::List: {
      bool flat = std::all_of(node.children.begin(), node.children.end(),
                              [](const Node& c) { return c.kind == Node::Kind::Scalar || c.kind == Node::Kind::Null; });
      if (flat) out << YAML::Flow;
      out << YAML::BeginSeq;
      for (const Node& child : node.children) emit(out, child);
      out << YAML::EndSeq;
      break;
    }
    case Node::Kind::Map:
      if (node.keys.empty()) out << YAML::Flow;
      out << YAML::BeginMap;
      for (size_t i = 0; i < node.keys.size(); ++i) {
        out << YAML::Key << node.keys[i] << YAML::Value;
        emit(out, node.children[i]);
      }
      out << YAML::EndMap;
      break;
  }
}
}  // namespace

std::string Config::to_yaml() const {
  YAML::Emitter out;
  emit(out, document_->root);
  return std::string(out.c_str()) + "\n";
}

#define STRATA_CONFIG_INSTANTIATE_GET(T)                        \
  template T Config::get<T>(const std::string&) const;          \
  template T Config::get<T>(const std::string&, const T&) const;
STRATA_CONFIG_INSTANTIATE_GET(bool)
STRATA_CONFIG_INSTANTIATE_GET(int)
STRATA_CONFIG_INSTANTIATE_GET(int64_t)
STRATA_CONFIG_INSTANTIATE_GET(double)
STRATA_CONFIG_INSTANTIATE_GET(std::string)
STRATA_CONFIG_INSTANTIATE_GET(std::vector<int64_t>)
STRATA_CONFIG_INSTANTIATE_GET(std::vector<double>)
STRATA_CONFIG_INSTANTIATE_GET(std::vector<std::string>)
#undef STRATA_CONFIG_INSTANTIATE_GET

#define STRATA_CONFIG_INSTANTIATE_NUMERIC(T)                                     \
  template T Config::get_positive<T>(const std::string&) const;                  \
  template T Config::get_positive<T>(const std::string&, const T&) const;        \
  template T Config::get_in_range<T>(const std::string&, T, T) const;            \
  template T Config::get_in_range<T>(const std::string&, T, T, const T&) const;
STRATA_CONFIG_INSTANTIATE_NUMERIC(int)
STRATA_CONFIG_INSTANTIATE_NUMERIC(int64_t)
STRATA_CONFIG_INSTANTIATE_NUMERIC(double)
#undef STRATA_CONFIG_INSTANTIATE_NUMERIC

}  // namespace strata::config
