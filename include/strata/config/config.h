// Recipes: YAML files composed with `include:` and adjusted by `key.path=value`
// overrides, read through typed getters that remember every key they were asked
// for, so that a misspelled key is reported instead of silently ignored.
//
// Loading. `include:` (a file name or a list of them, relative to the including
// file) pulls in other recipes; they are deep-merged in order, then the including
// file's own keys on top (maps merge key by key, recursively; anything else
// replaces). Includes nest; a cycle is an error. Overrides are applied last, in
// order, with the same merge rule; they may create keys. Every value remembers
// where it came from (file:line, or "command line"), and every error names it:
//
//   recipes/x.yaml: train.steps: required key is missing
//   recipes/x.yaml:12: model.d_state: expected an integer, got 'abc'
//   recipes/x.yaml:7: unknown key model.d_stat (did you mean model.d_state?)
//
// Paths are dotted (`model.mixer.d_state`); a number addresses an element of a
// list (`model.layers.0.kind`). A key whose value is null (`key:`, `~`, `null`)
// counts as absent: get with a fallback returns the fallback, has() is false,
// which lets an override such as `train.resume=null` unset an included value.
//
// Reading. get/has/keys are const but record the paths they were asked for
// (present or not). check_all_read() then reports the first value in the
// document that nothing asked for, suggesting the closest path that was asked
// for. A list read as a whole counts as read with all its elements. keys(path)
// counts the map's direct children as read (a child that is itself a map still
// has its own keys checked). A Config is not safe to use from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace strata::config {

struct Document;  // the resolved document with the source of every value (config.cpp)

class Config {
 public:
  Config();
  ~Config();
  Config(const Config& other);
  Config& operator=(const Config& other);
  Config(Config&&) noexcept;
  Config& operator=(Config&&) noexcept;

  // Reads `path`, resolves its includes and applies `overrides` ("key.path=value",
  // the value parsed as YAML: `train.steps=200`, `optim.lr=3e-4`, `model.layers=[1,2]`).
  static Config load(const std::string& path, const std::vector<std::string>& overrides = {});
  // Parses `text`; `name` stands for the file in messages (includes are resolved
  // relative to its folder).
  static Config from_yaml_string(const std::string& text, const std::string& name);

  // T: bool, int, int64_t, double, std::string, std::vector<int64_t>,
  // std::vector<double>, std::vector<std::string>.
  template <class T>
  T get(const std::string& path) const;  // throws when missing
  template <class T>
  T get(const std::string& path, const T& fallback) const;

  // Validated getters; the message says what was expected ("expected a positive
  // integer, got -4"). T: int, int64_t, double. Ranges are inclusive.
  template <class T>
  T get_positive(const std::string& path) const;
  template <class T>
  T get_positive(const std::string& path, const T& fallback) const;
  template <class T>
  T get_in_range(const std::string& path, T low, T high) const;
  template <class T>
  T get_in_range(const std::string& path, T low, T high, const T& fallback) const;
  std::string get_choice(const std::string& path, const std::vector<std::string>& choices) const;
  std::string get_choice(const std::string& path, const std::vector<std::string>& choices,
                         const std::string& fallback) const;

  bool has(const std::string& path) const;
  std::vector<std::string> keys(const std::string& path) const;  // children of a map, in file order; "" = root

  // Sets one value as an override does (yaml_value parsed as YAML; creates keys).
  // Its source in messages is "command line".
  void set(const std::string& path, const std::string& yaml_value);

  // Throws for the first value (in document order) that no get/has/keys asked for.
  void check_all_read() const;

  // The fully resolved document (includes expanded, overrides applied); loading it
  // with from_yaml_string gives the same values.
  std::string to_yaml() const;

  // The file this recipe was loaded from (or the name given to from_yaml_string).
  const std::string& name() const { return name_; }

 private:
  explicit Config(std::unique_ptr<Document> document, std::string name);

  std::unique_ptr<Document> document_;
  std::string name_;
  mutable std::set<std::string> read_paths_;
};

// The explicit instantiations live in config.cpp.
#define STRATA_CONFIG_DECLARE_GET(T)                                       \
  extern template T Config::get<T>(const std::string&) const;              \
  extern template T Config::get<T>(const std::string&, const T&) const;
STRATA_CONFIG_DECLARE_GET(bool)
STRATA_CONFIG_DECLARE_GET(int)
STRATA_CONFIG_DECLARE_GET(int64_t)
STRATA_CONFIG_DECLARE_GET(double)
STRATA_CONFIG_DECLARE_GET(std::string)
STRATA_CONFIG_DECLARE_GET(std::vector<int64_t>)
STRATA_CONFIG_DECLARE_GET(std::vector<double>)
STRATA_CONFIG_DECLARE_GET(std::vector<std::string>)
#undef STRATA_CONFIG_DECLARE_GET

#define STRATA_CONFIG_DECLARE_NUMERIC(T)                                                          \
  extern template T Config::get_positive<T>(const std::string&) const;                            \
  extern template T Config::get_positive<T>(const std::string&, const T&) const;                  \
  extern template T Config::get_in_range<T>(const std::string&, T, T) const;                      \
  extern template T Config::get_in_range<T>(const std::string&, T, T, const T&) const;
STRATA_CONFIG_DECLARE_NUMERIC(int)
STRATA_CONFIG_DECLARE_NUMERIC(int64_t)
STRATA_CONFIG_DECLARE_NUMERIC(double)
#undef STRATA_CONFIG_DECLARE_NUMERIC

}  // namespace strata::config
