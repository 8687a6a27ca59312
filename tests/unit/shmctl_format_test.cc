#include "format.h"

#include <gtest/gtest.h>

namespace shmbroker::shmctl {
namespace {

TEST(ShmctlFormat, Shape) {
  EXPECT_EQ(ShapeString({}), "()");
  EXPECT_EQ(ShapeString({7}), "(7,)");
  EXPECT_EQ(ShapeString({3, 4}), "(3, 4)");
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

TEST(ShmctlFormat, PrometheusLabelValueEscapesBackslashQuoteAndNewline) {
  EXPECT_EQ(PrometheusLabelValue("plain/é"), "plain/é");
  EXPECT_EQ(PrometheusLabelValue("a\\b\"c\nd\te"), R"(a\\b\"c\nd)"
                                                   "\te");
}

}  // namespace
}  // namespace shmbroker::shmctl
