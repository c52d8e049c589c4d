// Chat data: zerolora's renderers against what Transformers renders with each family's released
// template (tools/make_chat_fixtures.py), template recognition, the records, and the labels.
#include <gtest/gtest.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "data/chat.hpp"
#include "data/dataset.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

fs::path chat_fixtures() {
  return testing::fixtures_dir() / "chat_templates";
}

nlohmann::json chat_expected() {
  std::ifstream in(chat_fixtures() / "expected.json");
  return nlohmann::json::parse(in);
}

std::vector<ChatMessage> conversation(const nlohmann::json& j) {
  std::vector<ChatMessage> messages;
  for (const auto& m : j) messages.push_back({m.at("role"), m.at("content")});
  return messages;
}

class TemplateFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TemplateFixture, RendersAsTransformersAndSpansAreTheAssistantTurns) {
  const std::string name = GetParam();
  const nlohmann::json all = chat_expected();
  const auto& t = all.at("templates").at(name);
  ChatTemplate chat = ChatTemplate::named(name);
  chat.set_date(all.at("date"));  // what the fixtures' strftime_now gave
  const std::string bos = t.at("bos_token"), eos = t.at("eos_token");
  for (std::size_t c = 0; c < all.at("conversations").size(); ++c) {
    const auto messages = conversation(all["conversations"][c]);
    if (t.at("renders")[c].is_null()) {  // the template raises: so does zerolora
      EXPECT_THROW(chat.render(messages, bos, eos), FormatError) << name << " conversation " << c;
      continue;
    }
    const RenderedChat rendered = chat.render(messages, bos, eos);
    EXPECT_EQ(rendered.text, t.at("renders")[c].get<std::string>())
        << name << " conversation " << c;
    const std::vector<ChatMessage> asked(messages.begin(), messages.end() - 1);
    EXPECT_EQ(chat.render(asked, bos, eos, true).text,
              t.at("generation_prompts")[c].get<std::string>())
        << name << " generation prompt, conversation " << c;
    // One span per assistant message, in order, each holding that message's (stripped)
    // content and ending with the turn's end marker.
    std::vector<std::string> answers;
    for (const auto& m : messages)
      if (m.role == "assistant") answers.push_back(m.content);
    ASSERT_EQ(rendered.trainable.size(), answers.size()) << name << " conversation " << c;
    for (std::size_t k = 0; k < answers.size(); ++k) {
      const auto& span = rendered.trainable[k];
      ASSERT_LE(span.end, rendered.text.size());
      const std::string text = rendered.text.substr(span.begin, span.end - span.begin);
      const std::string marker = name.rfind("llama3", 0) == 0 ? "<|eot_id|>" : eos;
      EXPECT_EQ(text.substr(text.size() - std::min(text.size(), marker.size())), marker) << text;
      std::string stripped = answers[k];
      stripped.erase(0, stripped.find_first_not_of(" \t\n"));
      stripped.erase(stripped.find_last_not_of(" \t\n") + 1);
      EXPECT_NE(text.find(stripped), std::string::npos) << name << ": " << text;
    }
  }
}

TEST_P(TemplateFixture, TheReleasedTemplateIsRecognised) {
  const std::string name = GetParam();
  std::ifstream in(chat_fixtures() / (name + ".jinja"));
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  EXPECT_EQ(ChatTemplate::recognise(text), name);
  // Line ends and a trailing newline do not matter; a changed character, or changed whitespace
  // inside (it would be rendered), does.
  std::string crlf;
  for (char c : text) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  EXPECT_EQ(ChatTemplate::recognise(crlf + "\n"), name);
  std::string changed = text;
  changed[changed.size() / 2] = changed[changed.size() / 2] == 'x' ? 'y' : 'x';
  EXPECT_FALSE(ChatTemplate::recognise(changed).has_value());
  const std::size_t space = text.find(' ');
  ASSERT_NE(space, std::string::npos);
  EXPECT_FALSE(ChatTemplate::recognise(text.substr(0, space) + "  " + text.substr(space + 1)));
}

INSTANTIATE_TEST_SUITE_P(Templates, TemplateFixture,
                         ::testing::Values("llama3", "llama3.1", "llama3.2", "qwen2.5", "chatml",
                                           "mistral", "mistral-v7", "llama2-chat", "zephyr"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '.' || c == '-') c = '_';
                           return n;
                         });

// Llama 3.2 dates its header as strftime_now("%d %b %Y") (English month, day zero-padded),
// Mistral v7 its default system prompt as "%Y-%m-%d": today's local date unless one is set.
TEST(ChatTemplate, DatedTemplatesWriteTheirDate) {
  const std::vector<ChatMessage> chat{{"user", "a"}, {"assistant", "b"}};
  const std::vector<ChatMessage> with_system{{"system", "s"}, {"user", "a"}, {"assistant", "b"}};
  ChatTemplate llama = ChatTemplate::named("llama3.2");
  EXPECT_TRUE(llama.writes_date(chat));
  EXPECT_TRUE(llama.writes_date(with_system));
  EXPECT_FALSE(ChatTemplate::named("llama3.1").writes_date(chat));
  for (const auto& [iso, text] :
       std::vector<std::pair<std::string, std::string>>{{"2024-12-31", "31 Dec 2024"},
                                                        {"2025-05-09", "09 May 2025"},
                                                        {"2028-02-29", "29 Feb 2028"}}) {
    llama.set_date(iso);
    EXPECT_EQ(llama.date(), iso);
    EXPECT_NE(llama.render(chat, "", "").text.find("\nToday Date: " + text + "\n\n"),
              std::string::npos)
        << iso;
  }
  ChatTemplate mistral = ChatTemplate::named("mistral-v7");
  EXPECT_TRUE(mistral.writes_date(chat));
  EXPECT_FALSE(mistral.writes_date(with_system));  // its default system prompt holds the date
  mistral.set_date("2025-05-09");
  EXPECT_NE(mistral.render(chat, "<s>", "</s>").text.find("The current date is 2025-05-09."),
            std::string::npos);
  for (const char* bad :
       {"2026-02-30", "2026-1-02", "02-01-2026", "2026-01-02 ", "0000-01-01", "yesterday", ""})
    EXPECT_THROW(llama.set_date(bad), UsageError) << bad;
  EXPECT_EQ(llama.date(), "2028-02-29");  // a refused date leaves the one set
  // Unset: today's local date (read on either side of the call, for a run across midnight).
  const auto today = [] {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char text[16];
    std::strftime(text, sizeof text, "%Y-%m-%d", &local);
    return std::string(text);
  };
  const std::string before = today();
  const std::string made = ChatTemplate::named("llama3.2").date();
  EXPECT_TRUE(made == before || made == today()) << made;
}

TEST(ChatTemplate, RefusesWhatTheTemplateRefuses) {
  const std::vector<ChatMessage> not_alternating{{"user", "a"}, {"user", "b"}, {"assistant", "c"}};
  EXPECT_THROW(ChatTemplate::named("mistral").render(not_alternating, "<s>", "</s>"), FormatError);
  EXPECT_THROW(ChatTemplate::named("llama2-chat").render(not_alternating, "<s>", "</s>"),
               FormatError);
  const std::vector<ChatMessage> tool{{"user", "a"}, {"tool", "b"}};
  EXPECT_THROW(ChatTemplate::named("chatml").render(tool, "", "<|im_end|>"), FormatError);
  EXPECT_THROW(ChatTemplate::named("no-such"), UsageError);
}

// A Llama-3-style model directory: the llama3 fixture tokenizer with the released template.
class ChatData : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::copy(testing::fixtures_dir() / "tokenizers" / "llama3", dir_.path() / "model");
    std::ifstream config_in(dir_.path() / "model" / "tokenizer_config.json");
    nlohmann::json config = nlohmann::json::parse(config_in);
    std::ifstream template_in(chat_fixtures() / "llama3.jinja");
    config["chat_template"] =
        std::string{std::istreambuf_iterator<char>(template_in), std::istreambuf_iterator<char>()};
    std::ofstream(dir_.path() / "model" / "tokenizer_config.json") << config.dump();
  }
  fs::path write(const std::string& name, const std::string& content) {
    std::ofstream(dir_.path() / name) << content;
    return dir_.path() / name;
  }
  testing::TempDir dir_;
};

TEST_F(ChatData, MessagesAndShareGptRecordsTrainOnTheAssistantTurnsOnly) {
  const Tokenizer tokenizer(dir_.path() / "model");
  ASSERT_EQ(ChatTemplate::for_tokenizer(tokenizer, "").name(), "llama3");
  const auto openai =
      write("chat.jsonl",
            R"({"messages": [{"role": "user", "content": "Hi there"}, )"
            R"({"role": "assistant", "content": "Hello friend"}]})"
            "\n"
            R"({"system": "Be kind.", "messages": [{"role": "user", "content": "No answer"}]})"
            "\n");
  const auto sharegpt =
      write("sharegpt.json", R"([{"conversations": [{"from": "human", "value": "Hi there"}, )"
                             R"({"from": "gpt", "value": "Hello friend"}]}])");
  Runtime rt(1);
  // One line holding {"data": [records]}: a document, not JSON Lines.
  const auto wrapped =
      write("wrapped.json", R"({"data": [{"messages": [{"role": "user", "content": "Hi there"}, )"
                            R"({"role": "assistant", "content": "Hello friend"}]}]})");
  // The Python package's records arrive as JSON Lines in memory.
  const InMemoryRecords memory{"the list", testing::read_file(openai)};
  for (const auto& file : {openai, sharegpt, wrapped, fs::path()}) {
    DataOptions options;
    options.train_file = file;  // recognised as chat by its first record
    if (file.empty()) options.train_records = memory;
    use_special_tokens(options.tokenize, tokenizer, nullptr);
    const TrainingData data = build_training_data(rt, options, tokenizer);
    EXPECT_EQ(data.report.chat_template, "llama3");
    ASSERT_EQ(data.train.size(), 1u) << file;  // the record without an answer is skipped
    const TokenSequence& s = data.train[0];
    const std::string text =
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n";
    const std::size_t prompt = tokenizer.encode(text).size();
    const auto full = tokenizer.encode(text + "Hello friend<|eot_id|>");
    EXPECT_EQ(s.input_ids, full);
    for (std::size_t i = 0; i < s.labels.size(); ++i)
      EXPECT_EQ(s.labels[i], i < prompt ? kIgnoreIndex : full[i]) << i;
  }
}

TEST_F(ChatData, ATurnCutByMaxSeqLengthKeepsNoLabels) {
  const Tokenizer tokenizer(dir_.path() / "model");
  const auto file = write("chat.json", R"([{"messages": [{"role": "user", "content": "Hi"}, )"
                                       R"({"role": "assistant", "content": "Hello"}, )"
                                       R"({"role": "user", "content": "More"}, )"
                                       R"({"role": "assistant", "content": "A long answer that )"
                                       R"(will not fit in the sequence"}]}])");
  const std::string turn = "<|start_header_id|>assistant<|end_header_id|>\n\n";
  const std::string first =
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi"
      "<|eot_id|>" +
      turn;
  const std::string second = first +
                             "Hello<|eot_id|><|start_header_id|>user<|end_header_id|>"
                             "\n\nMore<|eot_id|>" +
                             turn;
  const auto first_answer = tokenizer.encode(first).size();
  const auto first_end = tokenizer.encode(first + "Hello<|eot_id|>").size();
  DataOptions options;
  options.train_file = file;
  // The sequence ends three tokens into the second answer.
  options.tokenize.max_seq_length = static_cast<Index>(tokenizer.encode(second).size() + 3);
  use_special_tokens(options.tokenize, tokenizer, nullptr);
  Runtime rt(1);
  const TrainingData data = build_training_data(rt, options, tokenizer);
  EXPECT_EQ(data.report.truncated_turns, 1);
  ASSERT_EQ(data.train.size(), 1u);
  const TokenSequence& s = data.train[0];
  ASSERT_EQ(s.size(), options.tokenize.max_seq_length);
  for (std::size_t i = 0; i < s.labels.size(); ++i)
    EXPECT_EQ(s.labels[i] != kIgnoreIndex, i >= first_answer && i < first_end) << i;
}

// Mistral's and Llama 2's "[/INST] " + "the": the space merges into the reply's first token
// ("▁the▁" in this vocabulary, "▁Sure" in Llama 2's), which must still train (the token
// holding the reply's first character), though the text before the reply alone ends in "▁".
TEST(ChatLabels, ATokenMergedAcrossTheBoundaryBelongsToTheReply) {
  const Tokenizer tokenizer(testing::fixtures_dir() / "tokenizers" / "mistral");
  for (const char* name : {"mistral", "llama2-chat"}) {
    const RenderedChat chat = ChatTemplate::named(name).render(
        {{"user", "Hello there"}, {"assistant", "the end"}}, "<s>", "</s>");
    ChatReport report;
    TokenizeOptions options;
    const TokenSequence s = tokenize_chat(tokenizer, chat, options, report);
    std::vector<std::int32_t> trained;
    std::size_t first = s.labels.size();
    for (std::size_t i = 0; i < s.labels.size(); ++i)
      if (s.labels[i] != kIgnoreIndex) {
        trained.push_back(s.labels[i]);
        first = std::min(first, i);
      }
    ASSERT_LT(first, s.labels.size()) << name;
    EXPECT_EQ(tokenizer.decode(trained),
              std::string(name) == "mistral" ? "the end</s>" : "the end </s>")
        << name;
    EXPECT_EQ(tokenizer.token_text(s.input_ids[first - 1]), "[/INST]") << name;
  }
}

// The other end: where the end-of-turn marker is not a special token, its last characters can
// merge with what follows. Two merges added to the Qwen2 fixture's vocabulary: ">" + "\n"
// first, "|" + ">" last. Zephyr's "</s>" + "\n" then ends in one ">\n" token; "<|end|>" + "\n"
// ends in "|", ">\n", where "<|end|>" alone ends in "|>" (the text before the turn's end,
// encoded alone, ends in a token the whole text splits). The token holding the turn's last
// character trains, as in Transformers' assistant masks: without it, the model never learns
// the marker's last token.
TEST(ChatLabels, ATokenMergedAcrossATurnsEndBelongsToTheTurn) {
  const testing::TempDir dir;
  std::ifstream in(testing::fixtures_dir() / "tokenizers" / "qwen2" / "tokenizer.json");
  nlohmann::json spec = nlohmann::json::parse(in);
  int unused_id = 0;  // past the vocabulary's and the added tokens' ids
  for (const auto& [token, id] : spec["model"]["vocab"].items())
    unused_id = std::max(unused_id, id.get<int>() + 1);
  for (const auto& added : spec["added_tokens"])
    unused_id = std::max(unused_id, added["id"].get<int>() + 1);
  nlohmann::json& merges = spec["model"]["merges"];
  spec["model"]["vocab"][">\u010a"] = unused_id;  // ">" "\n", byte-level
  merges.insert(merges.begin(), nlohmann::json::array({">", "\u010a"}));
  spec["model"]["vocab"]["|>"] = unused_id + 1;
  merges.push_back(nlohmann::json::array({"|", ">"}));
  std::ofstream(dir.path() / "tokenizer.json") << spec.dump();
  const Tokenizer tokenizer(dir.path() / "tokenizer.json");
  for (const std::string end_of_turn : {"</s>", "<|end|>"}) {
    const RenderedChat chat = ChatTemplate::named("zephyr").render(
        {{"user", "Hi"}, {"assistant", "the end"}, {"user", "More"}, {"assistant", "ok"}}, "<s>",
        end_of_turn);
    ChatReport report;
    const TokenSequence s = tokenize_chat(tokenizer, chat, TokenizeOptions{}, report);
    std::vector<std::vector<std::int32_t>> turns;  // the runs of trained tokens
    for (std::size_t i = 0; i < s.labels.size(); ++i) {
      if (s.labels[i] == kIgnoreIndex) continue;
      if (i == 0 || s.labels[i - 1] == kIgnoreIndex) turns.emplace_back();
      turns.back().push_back(s.labels[i]);
    }
    ASSERT_EQ(turns.size(), 2u) << end_of_turn;
    EXPECT_EQ(tokenizer.decode(turns[0]), "the end" + end_of_turn + "\n");
    EXPECT_EQ(tokenizer.decode(turns[1]), "ok" + end_of_turn + "\n");
  }
}

TEST_F(ChatData, BadRecordsNameTheRecordAndField) {
  const Tokenizer tokenizer(dir_.path() / "model");
  Runtime rt(1);
  auto error_of = [&](const std::string& content) -> std::string {
    DataOptions options;
    options.kind = RecordKind::kChat;
    options.train_file = write("bad.jsonl", content);
    use_special_tokens(options.tokenize, tokenizer, nullptr);
    try {
      build_training_data(rt, options, tokenizer);
    } catch (const Error& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_NE(error_of(R"({"messages": [{"role": "user"}]})"
                     "\n")
                .find("messages[0]: no field 'content'"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"conversations": [{"from": "robot", "value": "x"}]})"
                     "\n")
                .find("unknown speaker 'robot'"),
            std::string::npos);
  EXPECT_NE(error_of("{\"messages\": []}\n{\"messages\": 3}\n").find("line 2"), std::string::npos);
  // The template's refusal names the record by its place in the file, the skipped record
  // without an answer before it counted.
  EXPECT_NE(
      error_of(
          R"({"messages": [{"role": "user", "content": "no answer"}]})"
          "\n"
          R"({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}, {"role": "assistant", "content": "c"}]})"
          "\n")
          .find("bad.jsonl: record 1: chat template llama3: message 1 has role 'tool'"),
      std::string::npos);
}

TEST_F(ChatData, AnUnknownTemplateIsRefusedSayingWhatToPass) {
  std::ifstream in(dir_.path() / "model" / "tokenizer_config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}";
  std::ofstream(dir_.path() / "model" / "tokenizer_config.json") << config.dump();
  const Tokenizer tokenizer(dir_.path() / "model");
  try {
    ChatTemplate::for_tokenizer(tokenizer, "");
    FAIL() << "an unknown template was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--chat_template"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ChatTemplate::for_tokenizer(tokenizer, "chatml").name(), "chatml");
}

}  // namespace
}  // namespace zerolora
