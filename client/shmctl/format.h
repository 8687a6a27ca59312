// Text helpers for shmctl: human units, durations, JSON. Pure functions, unit-tested.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmbroker::shmctl {

// 0 B, 512 B, 4.0 KiB, 1.5 MiB, 8.0 GiB, 2.0 TiB.
std::string HumanBytes(std::uint64_t bytes);
// The largest whole unit: 5s, 3m, 2h, 4d.
std::string HumanAge(std::chrono::seconds age);
// "90s", "10m", "2h", "7d", or plain seconds; nullopt if malformed.
std::optional<std::chrono::seconds> ParseDuration(std::string_view text);
// 2026-11-23T04:05:31.836Z (UTC).
std::string Iso8601(std::chrono::system_clock::time_point t);
// "(3, 4)" like NumPy; "()" for 0-d.
std::string ShapeString(const std::vector<std::uint64_t>& shape);
// "0644".
std::string ModeString(std::uint32_t mode);
// A JSON string literal with quotes.
std::string JsonString(std::string_view s);

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
  const std::string& str() const { return out_; }

 private:
  void Comma();
  std::string out_;
  std::vector<bool> first_;  // Per open container: no element written yet.
  bool after_key_ = false;
};

}  // namespace shmbroker::shmctl
