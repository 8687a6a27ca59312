#include "format.h"

#include <gtest/gtest.h>

namespace shmbroker::shmctl {
namespace {

using std::chrono::seconds;

TEST(ShmctlFormat, HumanBytes) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.0 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(64ull << 20), "64.0 MiB");
  EXPECT_EQ(HumanBytes(8ull << 30), "8.0 GiB");
  EXPECT_EQ(HumanBytes(3ull << 40), "3.0 TiB");
}

TEST(ShmctlFormat, HumanAgeUsesTheLargestWholeUnit) {
  EXPECT_EQ(HumanAge(seconds(-3)), "0s");
  EXPECT_EQ(HumanAge(seconds(5)), "5s");
  EXPECT_EQ(HumanAge(seconds(119)), "119s");
  EXPECT_EQ(HumanAge(seconds(180)), "3m");
  EXPECT_EQ(HumanAge(seconds(2 * 3600)), "2h");
  EXPECT_EQ(HumanAge(seconds(4 * 86400 + 5)), "4d");
}

TEST(ShmctlFormat, ParseDuration) {
  EXPECT_EQ(ParseDuration("90s"), seconds(90));
  EXPECT_EQ(ParseDuration("90"), seconds(90));
  EXPECT_EQ(ParseDuration("10m"), seconds(600));
  EXPECT_EQ(ParseDuration("2h"), seconds(7200));
  EXPECT_EQ(ParseDuration("7d"), seconds(7 * 86400));
  for (const char* bad : {"", "h", "-5s", "5x", "1.5h", "5 s", "99999999999999999999d"}) {
    EXPECT_FALSE(ParseDuration(bad).has_value()) << bad;
  }
}

TEST(ShmctlFormat, ShapeModeAndTime) {
  EXPECT_EQ(ShapeString({}), "()");
  EXPECT_EQ(ShapeString({7}), "(7,)");
  EXPECT_EQ(ShapeString({3, 4}), "(3, 4)");
  EXPECT_EQ(ModeString(0600), "0600");
  EXPECT_EQ(ModeString(0644), "0644");
  EXPECT_EQ(
      Iso8601(std::chrono::system_clock::time_point(std::chrono::milliseconds(1795000000123))),
      "2026-11-18T11:06:40.123Z");
}

TEST(ShmctlFormat, JsonIsEscapedAndWellFormed) {
  EXPECT_EQ(JsonString("a\"b\\c\n\x01"), R"("a\"b\\c\n\u0001")");
  JsonWriter j;
  j.BeginObject();
  j.Key("n").Number(std::uint64_t{3});
  j.Key("list").BeginArray().String("x").Bool(true).BeginObject().EndObject().EndArray();
  j.Key("empty").BeginArray().EndArray();
  j.Key("f").Number(1.5);
  j.EndObject();
  EXPECT_EQ(j.str(), R"({"n":3,"list":["x",true,{}],"empty":[],"f":1.500})");
}

}  // namespace
}  // namespace shmbroker::shmctl
