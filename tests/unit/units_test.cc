#include "common/units.h"

#include <gtest/gtest.h>

namespace shmbroker {
namespace {

using std::chrono::seconds;

TEST(Units, HumanBytes) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.0 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(64ull << 20), "64.0 MiB");
  EXPECT_EQ(HumanBytes(8ull << 30), "8.0 GiB");
  EXPECT_EQ(HumanBytes(3ull << 40), "3.0 TiB");
}

TEST(Units, HumanBytesNeverShows1024OfAUnit) {
  EXPECT_EQ(HumanBytes(1048575), "1.0 MiB");
  EXPECT_EQ(HumanBytes((1ull << 20) - 52), "1023.9 KiB");  // Still below 1023.95 KiB.
  EXPECT_EQ(HumanBytes((1ull << 30) - 1), "1.0 GiB");
  EXPECT_EQ(HumanBytes((1ull << 40) - 1), "1.0 TiB");
  for (std::uint64_t b = 1000; b < (1ull << 42); b = b * 3 + 7) {
    EXPECT_EQ(HumanBytes(b).find("1024.0"), std::string::npos) << b;
  }
}

TEST(Units, ParseSize) {
  EXPECT_EQ(*ParseSize("0"), 0u);
  EXPECT_EQ(*ParseSize("1048576"), 1048576u);
  EXPECT_EQ(*ParseSize("512K"), 512u << 10);
  EXPECT_EQ(*ParseSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseSize("8G"), 8ull << 30);
  EXPECT_EQ(*ParseSize("2T"), 2ull << 40);
  EXPECT_EQ(*ParseSize("8GiB"), 8ull << 30);
  EXPECT_EQ(*ParseSize("64MB"), 64ull << 20);
  EXPECT_EQ(*ParseSize("100B"), 100u);
  for (const char* bad :
       {"", "M", "-1", "1.5G", "8X", "8Gi", "8 G", "99999999999999999999", "20000000000000000T"}) {
    EXPECT_FALSE(ParseSize(bad).ok()) << bad;
  }
}

TEST(Units, HumanAgeUsesTheLargestWholeUnit) {
  EXPECT_EQ(HumanAge(seconds(-3)), "0s");
  EXPECT_EQ(HumanAge(seconds(5)), "5s");
  EXPECT_EQ(HumanAge(seconds(119)), "119s");
  EXPECT_EQ(HumanAge(seconds(180)), "3m");
  EXPECT_EQ(HumanAge(seconds(2 * 3600)), "2h");
  EXPECT_EQ(HumanAge(seconds(4 * 86400 + 5)), "4d");
}

TEST(Units, ParseDurationNeedsAUnit) {
  EXPECT_EQ(ParseDuration("90s"), seconds(90));
  EXPECT_EQ(ParseDuration("10m"), seconds(600));
  EXPECT_EQ(ParseDuration("2h"), seconds(7200));
  EXPECT_EQ(ParseDuration("7d"), seconds(7 * 86400));
  EXPECT_EQ(ParseDuration("1w"), seconds(7 * 86400));
  for (const char* bad :
       {"", "5", "90", "h", "-5s", "5x", "1.5h", "5 s", "99999999999999999999d"}) {
    EXPECT_FALSE(ParseDuration(bad).has_value()) << bad;
  }
}

TEST(Units, TimesAndModes) {
  using std::chrono::milliseconds;
  using std::chrono::system_clock;
  EXPECT_EQ(ModeString(0600), "0600");
  EXPECT_EQ(ModeString(0644), "0644");
  EXPECT_EQ(Iso8601(system_clock::time_point(milliseconds(1795000000123))),
            "2026-11-18T11:06:40.123Z");
  // Sub-millisecond parts are cut, not rounded, in both forms: .9996 s stays in its second.
  auto t = system_clock::time_point(std::chrono::microseconds(1795000000999600));
  EXPECT_EQ(Iso8601(t), "2026-11-18T11:06:40.999Z");
  EXPECT_EQ(UnixMillis(t), 1795000000999);
  EXPECT_EQ(Iso8601(system_clock::time_point(milliseconds(-1))), "1969-12-31T23:59:59.999Z");
}

}  // namespace
}  // namespace shmbroker
