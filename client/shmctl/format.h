// Text helpers for shmctl: shapes and JSON. Pure functions, unit-tested. (Units, durations and
// times, shared with the daemon, are in common/units.h.)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/units.h"

namespace shmbroker::shmctl {

// "(3, 4)" like NumPy; "()" for 0-d.
std::string ShapeString(const std::vector<std::uint64_t>& shape);
// A JSON string literal with quotes.
std::string JsonString(std::string_view s);
// A Prometheus label value without quotes: backslash, double quote and newline escaped, as the
// text exposition format requires.
std::string PrometheusLabelValue(std::string_view s);

// Builds one JSON document; keys and values are appended in order.
class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view v);
  JsonWriter& Number(std::uint64_t v);
  JsonWriter& Number(std::int64_t v);
  JsonWriter& Number(double v);
  JsonWriter& Bool(bool v);
  JsonWriter& Null();
  const std::string& str() const { return out_; }

 private:
  void Comma();
  std::string out_;
  std::vector<bool> first_;  // Per open container: no element written yet.
  bool after_key_ = false;
};

}  // namespace shmbroker::shmctl
