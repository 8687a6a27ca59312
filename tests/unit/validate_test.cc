#include "validate.h"

#include <gtest/gtest.h>

#include <vector>

namespace shmbroker::daemon {
namespace {

TEST(ValidateName, AcceptsPrintableAsciiWithSlashes) {
  EXPECT_TRUE(ValidateName("a").ok());
  EXPECT_TRUE(ValidateName("job7/weights").ok());
  EXPECT_TRUE(ValidateName("x!#$%&'()*+,-.:;<=>?@[\\]^_`{|}~").ok());
  EXPECT_TRUE(ValidateName(std::string(255, 'n')).ok());
}

TEST(ValidateName, RejectsEmptyLongSpacesAndControl) {
  for (std::string bad : {std::string(), std::string(256, 'n'), std::string("a b"),
                          std::string("tab\there"), std::string("nl\n"), std::string("nul\0x", 5),
                          std::string("caf\xc3\xa9"), std::string("del\x7f")}) {
    Status s = ValidateName(bad);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << "name of " << bad.size() << " bytes";
    EXPECT_FALSE(s.message().empty());
  }
}

struct DtypeCase {
  const char* dtype;
  std::uint64_t itemsize;
};

TEST(ParseDtype, AcceptsWhatNumpyDtypeStrGives) {
  for (auto [d, size] : std::vector<DtypeCase>{
           {"<f8", 8},         {"|u1", 1},       {"<i4", 4},    {"<c16", 16}, {"|b1", 1},
           {">u2", 2},         {"<M8[ns]", 8},   {"<m8[s]", 8}, {"|S7", 7},   {"<U5", 20},
           {"|V16", 16},       {"<f2", 2},       {"<f4", 4},    {"<f16", 16}, {"<c8", 8},
           {"<c32", 32},       {"|i1", 1},       {">i8", 8},    {"<u8", 8},   {"<M8", 8},
           {">M8[us]", 8},     {"<m8[10ms]", 8}, {"<M8[D]", 8}, {"|S0", 0},   {">U1", 4},
           {"<M8[generic]", 8}}) {
    auto r = ParseDtype(d);
    ASSERT_TRUE(r.ok()) << d << ": " << r.status().ToString();
    EXPECT_EQ(*r, size) << d;
  }
}

TEST(ParseDtype, RejectsEverythingElse) {
  for (const char* d : {"",
                        "f8",
                        "float64",
                        "<f3",
                        "|O8",
                        "<O8",
                        "<i3",
                        "|i2",
                        "<u1",
                        "|f8",
                        "<b1",
                        "<S7",
                        "|U5",
                        "<V16",
                        "<M4",
                        "<M8[xs]",
                        "<M8[ns",
                        "<M8[0s]",
                        "<x8",
                        "=f8",
                        "<f",
                        "<f8 ",
                        "<i99999999999999999999",
                        "<c4",
                        "[('a','<i4')]"}) {
    auto r = ParseDtype(d);
    EXPECT_FALSE(r.ok()) << "'" << d << "' was accepted";
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    }
  }
}

TEST(ComputeNbytes, MultipliesAndHandlesZeroD) {
  std::vector<std::uint64_t> shape{3, 4, 5};
  EXPECT_EQ(*ComputeNbytes(8, shape), 480u);
  EXPECT_EQ(*ComputeNbytes(8, {}), 8u);  // 0-d: one item.
  std::vector<std::uint64_t> with_zero{1000000, 0, 7};
  EXPECT_EQ(*ComputeNbytes(8, with_zero), 0u);
  std::vector<std::uint64_t> dims32(32, 1);
  EXPECT_TRUE(ComputeNbytes(1, dims32).ok());
}

TEST(ComputeNbytes, RejectsOverflowTooManyDimsAndHugeSizes) {
  std::vector<std::uint64_t> overflow{1ull << 32, 1ull << 32};
  EXPECT_EQ(ComputeNbytes(8, overflow).status().code(), Code::kInvalidArgument);
  std::vector<std::uint64_t> wraps_to_small{1ull << 62, 4};  // 2^64 * 8 wraps to 0.
  EXPECT_EQ(ComputeNbytes(8, wraps_to_small).status().code(), Code::kInvalidArgument);
  std::vector<std::uint64_t> max_u64{~0ull};
  EXPECT_EQ(ComputeNbytes(2, max_u64).status().code(), Code::kInvalidArgument);
  std::vector<std::uint64_t> too_big{kMaxSegmentBytes + 1};
  EXPECT_EQ(ComputeNbytes(1, too_big).status().code(), Code::kInvalidArgument);
  std::vector<std::uint64_t> dims33(33, 1);
  EXPECT_EQ(ComputeNbytes(1, dims33).status().code(), Code::kInvalidArgument);
}

TEST(ValidateMode, OnlyPermissionBits) {
  EXPECT_TRUE(ValidateMode(0).ok());
  EXPECT_TRUE(ValidateMode(0777).ok());
  EXPECT_TRUE(ValidateMode(0640).ok());
  EXPECT_EQ(ValidateMode(01777).code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateMode(04600).code(), Code::kInvalidArgument);
}

TEST(ValidateAttrs, BoundsCountKeysAndValues) {
  EXPECT_TRUE(ValidateAttrs({{"units", "m/s"}, {"source", "sensor 7"}}).ok());
  std::map<std::string, std::string> many;
  for (std::size_t i = 0; i <= kMaxAttrs; ++i) many["k" + std::to_string(i)] = "v";
  EXPECT_EQ(ValidateAttrs(many).code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateAttrs({{"", "v"}}).code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateAttrs({{"a key", "v"}}).code(), Code::kInvalidArgument);
  EXPECT_EQ(ValidateAttrs({{std::string(kMaxAttrKeyBytes + 1, 'k'), "v"}}).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(ValidateAttrs({{"k", std::string(kMaxAttrValueBytes + 1, 'v')}}).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(ValidateAttrs({{"k", "\xff\xfe"}}).code(), Code::kInvalidArgument);
  EXPECT_TRUE(ValidateAttrs({{"k", "caf\xc3\xa9"}}).ok());
}

}  // namespace
}  // namespace shmbroker::daemon
