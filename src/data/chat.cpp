#include "data/chat.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <ctime>
#include <optional>

#include "core/error.hpp"
#include "data/unicode_text.hpp"

namespace zerolora {
namespace {

// Python's str.strip() (Jinja's trim): whitespace is what str.isspace() says, which includes
// the separators U+001C..U+001F that Unicode's White_Space does not.
bool python_space(char32_t c) {
  return is_unicode_whitespace(c) || (c >= 0x1C && c <= 0x1F);
}

std::string python_strip(const std::string& s) {
  return std::string(trim_unicode(s, true, true, python_space));
}

// Builds the text and the trainable spans.
class Renderer {
 public:
  void add(const std::string& text) { out_.text += text; }
  // An assistant turn: `lead` (not trained), then the content and `end` (trained).
  void assistant(const std::string& lead, const std::string& content, const std::string& end) {
    out_.text += lead;
    const std::size_t begin = out_.text.size();
    out_.text += content + end;
    out_.trainable.push_back({begin, out_.text.size()});
  }
  RenderedChat take() { return std::move(out_); }

 private:
  RenderedChat out_;
};

[[noreturn]] void refuse(const std::string& template_name, const std::string& why) {
  throw FormatError("chat template " + template_name + ": " + why);
}

void check_roles(const std::vector<ChatMessage>& messages, const std::string& name) {
  if (messages.empty()) refuse(name, "the conversation has no messages");
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant")
      refuse(name, "message " + std::to_string(i) + " has role '" + role +
                       "' (only system, user and assistant are supported)");
    // Mistral v0.3's and Llama 2's templates refuse (or drop) a system message after the
    // first; the others render it as a turn of its own.
    if (role == "system" && i != 0 && (name == "mistral" || name == "llama2-chat"))
      refuse(name, "message " + std::to_string(i) +
                       " is a system message; only the first message may be one");
  }
}

// After an optional system message, user and assistant must alternate, starting with user
// (the raise_exception of the Llama 2 and Mistral templates).
void check_alternation(const std::vector<ChatMessage>& messages, std::size_t from,
                       const std::string& name) {
  for (std::size_t i = from; i < messages.size(); ++i)
    if ((messages[i].role == "user") != ((i - from) % 2 == 0))
      refuse(name,
             "conversation roles must alternate user/assistant/user/assistant/... "
             "after the optional system message (message " +
                 std::to_string(i) + " is '" + messages[i].role + "')");
}

void render_llama3(const std::vector<ChatMessage>& messages, const std::string& bos, Renderer& r) {
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string header =
        (i == 0 ? bos : "") + "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n";
    if (m.role == "assistant")
      r.assistant(header, python_strip(m.content), "<|eot_id|>");
    else
      r.add(header + python_strip(m.content) + "<|eot_id|>");
  }
}

// Llama 3.1 / 3.3 (its header dated 26 Jul 2024) and 3.2 (dated as strftime_now("%d %b %Y")).
void render_llama31(const std::vector<ChatMessage>& messages, const std::string& bos,
                    const std::string& today, Renderer& r) {
  std::size_t first = 0;
  std::string system;
  if (messages[0].role == "system") {
    system = python_strip(messages[0].content);
    first = 1;
  }
  r.add(bos + "<|start_header_id|>system<|end_header_id|>\n\n" +
        "Cutting Knowledge Date: December 2023\nToday Date: " + today + "\n\n" + system +
        "<|eot_id|>");
  for (std::size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string header = "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n";
    if (m.role == "assistant")
      r.assistant(header, python_strip(m.content), "<|eot_id|>");
    else
      r.add(header + python_strip(m.content) + "<|eot_id|>");
  }
}

void render_chatml(const std::vector<ChatMessage>& messages, const std::string* default_system,
                   Renderer& r) {
  if (default_system && messages[0].role != "system")
    r.add("<|im_start|>system\n" + *default_system + "<|im_end|>\n");
  for (const ChatMessage& m : messages) {
    const std::string header = "<|im_start|>" + m.role + "\n";
    if (m.role == "assistant") {
      r.assistant(header, m.content, "<|im_end|>");
      r.add("\n");
    } else {
      r.add(header + m.content + "<|im_end|>\n");
    }
  }
}

void render_mistral(const std::vector<ChatMessage>& messages, const std::string& bos,
                    const std::string& eos, Renderer& r) {
  const bool has_system = messages[0].role == "system";
  const std::size_t first = has_system ? 1 : 0;
  check_alternation(messages, first, "mistral");
  r.add(bos);
  for (std::size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      // The system message goes into the last message only (when that is the user's), as the
      // v0.3 template does.
      const bool last = i + 1 == messages.size();
      r.add("[INST] " + (last && has_system ? messages[0].content + "\n\n" : std::string()) +
            m.content + "[/INST]");
    } else {
      r.assistant(" ", python_strip(m.content), eos);
    }
  }
}

void render_llama2_chat(const std::vector<ChatMessage>& messages, const std::string& bos,
                        const std::string& eos, Renderer& r) {
  const bool has_system = messages[0].role == "system";
  const std::size_t first = has_system ? 1 : 0;
  check_alternation(messages, first, "llama2-chat");
  for (std::size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    std::string content = m.content;
    if (i == first && has_system)
      content = "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" + m.content;
    if (m.role == "user")
      r.add(bos + "[INST] " + python_strip(content) + " [/INST]");
    else
      r.assistant(" ", python_strip(content), " " + eos);
  }
}

void render_zephyr(const std::vector<ChatMessage>& messages, const std::string& eos, Renderer& r) {
  for (const ChatMessage& m : messages) {
    // The newline after each message is the template's own, outside its {{ }}.
    const std::string header = "<|" + m.role + "|>\n";
    if (m.role == "assistant") {
      r.assistant(header, m.content, eos);
      r.add("\n");
    } else {
      r.add(header + m.content + eos + "\n");
    }
  }
}

// Mistral Small 3 (v7 tokenizer): the system prompt in [SYSTEM_PROMPT], Mistral's default one,
// dated, when the conversation has none; no stripping, no alternation check.
void render_mistral_v7(const std::vector<ChatMessage>& messages, const std::string& bos,
                       const std::string& eos, const std::string& today, Renderer& r) {
  std::size_t first = 0;
  std::string system;
  if (messages[0].role == "system") {
    system = messages[0].content;
    first = 1;
  } else {
    system =
        "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French "
        "startup headquartered in Paris.\nYour knowledge base was last updated on 2023-10-01. "
        "The current date is " +
        today +
        ".\n\nWhen you're not sure about some information, you say that you don't have the "
        "information and don't make up anything.\nIf the user's question is not clear, "
        "ambiguous, or does not provide enough context for you to accurately answer the "
        "question, you do not try to answer it right away and you rather ask the user to "
        "clarify their request (e.g. \"What are some good restaurants around me?\" => \"Where "
        "are you?\" or \"When is the next flight to Tokyo\" => \"Where do you travel from?\")";
  }
  r.add(bos + "[SYSTEM_PROMPT]" + system + "[/SYSTEM_PROMPT]");
  for (std::size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user")
      r.add("[INST]" + m.content + "[/INST]");
    else if (m.role == "system")
      r.add("[SYSTEM_PROMPT]" + m.content + "[/SYSTEM_PROMPT]");
    else
      r.assistant("", m.content, eos);
  }
}

// Today's local date as strftime_now("%Y-%m-%d") gives it to a template.
std::string local_date() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[16];
  std::strftime(text, sizeof text, "%Y-%m-%d", &local);
  return text;
}

struct Date {
  int year, month, day;
};

// YYYY-MM-DD, a day that exists; nullopt otherwise.
std::optional<Date> parse_date(const std::string& text) {
  const auto digits = [&](std::size_t from, std::size_t n) {
    int v = 0;
    for (std::size_t i = from; i < from + n; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(text[i]))) return -1;
      v = v * 10 + (text[i] - '0');
    }
    return v;
  };
  if (text.size() != 10 || text[4] != '-' || text[7] != '-') return std::nullopt;
  const Date d{digits(0, 4), digits(5, 2), digits(8, 2)};
  if (d.year < 1 || d.month < 0 || d.day < 0) return std::nullopt;  // (Python's years start at 1)
  const std::chrono::year_month_day ymd{std::chrono::year(d.year),
                                        std::chrono::month(static_cast<unsigned>(d.month)),
                                        std::chrono::day(static_cast<unsigned>(d.day))};
  if (!ymd.ok()) return std::nullopt;
  return d;
}

// strftime("%d %b %Y") in the C locale (what Python's strftime_now gives: Python leaves
// LC_TIME alone), whatever locale this process runs in: "06 Dec 2026".
std::string day_month_year(const std::string& iso_date) {
  static constexpr std::array<const char*, 12> kMonths{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const auto d = parse_date(iso_date);
  if (!d) throw InternalError("chat template date '" + iso_date + "' is not YYYY-MM-DD");
  return iso_date.substr(8, 2) + " " + kMonths[static_cast<std::size_t>(d->month - 1)] + " " +
         iso_date.substr(0, 4);
}

constexpr const char* kQwenDefaultSystem =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

// FNV-1a of a template's text with CR LF read as LF and the whitespace at its end dropped:
// the released template strings, whichever file (tokenizer_config.json, chat_template.jinja)
// and line ends they came in. Whitespace inside is kept: it is in the rendered text.
std::uint64_t template_fingerprint(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.remove_suffix(1);
  std::uint64_t h = 14695981039346656037ull;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    h = (h ^ static_cast<unsigned char>(text[i])) * 1099511628211ull;
  }
  return h;
}

struct KnownTemplate {
  std::uint64_t fingerprint;
  const char* name;
};
// The released templates (tests/fixtures/chat_templates/, whose README names each model):
// tools/make_chat_fixtures.py prints these, and the tests check them against the files.
constexpr std::array<KnownTemplate, 9> kKnownTemplates{{
    {0x0e60067a5537498eull, "llama3"},       // Meta-Llama-3-8B-Instruct
    {0xcc0368e1ffb6b958ull, "llama3.1"},     // Llama-3.1-8B-Instruct (and 3.3-70B)
    {0x368f4c34b8554414ull, "llama3.2"},     // Llama-3.2-1B-Instruct and 3B
    {0xe642ce246d7f2e3dull, "qwen2.5"},      // Qwen2.5-7B-Instruct
    {0x88bf4138d5c826f0ull, "chatml"},       // OpenHermes-2.5-Mistral-7B
    {0x2487e6e79d6345cfull, "mistral"},      // Mistral-7B-Instruct-v0.3
    {0x6c80e109d6684772ull, "mistral-v7"},   // Mistral-Small-24B-Instruct-2501
    {0xf344eecf1bd3a427ull, "llama2-chat"},  // Llama-2-7b-chat-hf
    {0xcd8b49000db02c2cull, "zephyr"},       // zephyr-7b-beta, TinyLlama-1.1B-Chat-v1.0
}};

}  // namespace

std::vector<std::string> ChatTemplate::names() {
  return {"llama3",  "llama3.1",   "llama3.2",    "qwen2.5", "chatml",
          "mistral", "mistral-v7", "llama2-chat", "zephyr"};
}

ChatTemplate::ChatTemplate(std::string name) : name_(std::move(name)), date_(local_date()) {}

bool ChatTemplate::writes_date(const std::vector<ChatMessage>& messages) const {
  if (name_ == "llama3.2") return true;
  return name_ == "mistral-v7" && !messages.empty() && messages[0].role != "system";
}

bool ChatTemplate::valid_date(const std::string& text) {
  return parse_date(text).has_value();
}

void ChatTemplate::set_date(const std::string& date) {
  if (!valid_date(date))
    throw UsageError("chat template date '" + date + "' is not a date of the form YYYY-MM-DD");
  date_ = date;
}

ChatTemplate ChatTemplate::named(const std::string& name) {
  const auto all = names();
  if (std::find(all.begin(), all.end(), name) == all.end()) {
    std::string list;
    for (const auto& n : all) list += (list.empty() ? "" : ", ") + n;
    throw UsageError("unknown chat template '" + name + "' (choose one of " + list + ")");
  }
  return ChatTemplate(name);
}

std::optional<std::string> ChatTemplate::recognise(const std::string& template_text) {
  const std::uint64_t fp = template_fingerprint(template_text);
  for (const auto& known : kKnownTemplates)
    if (known.fingerprint == fp) return std::string(known.name);
  return std::nullopt;
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tokenizer, const std::string& name) {
  if (!name.empty()) return named(name);
  std::string list;
  for (const auto& n : names()) list += (list.empty() ? "" : ", ") + n;
  const std::string& text = tokenizer.chat_template();
  if (text.empty())
    throw ConfigError(tokenizer.path().parent_path().string() +
                      " has no chat template (tokenizer_config.json's chat_template, "
                      "chat_template.jinja): pass --chat_template with one of " +
                      list);
  if (const auto known = recognise(text)) return named(*known);
  throw ConfigError(tokenizer.path().parent_path().string() +
                    ": its chat template is not one zerolora renders (it recognises the "
                    "released templates of Llama 3 / 3.1 / 3.2, Qwen2.5, ChatML, Mistral v0.3 and "
                    "v7, Llama 2 chat and Zephyr): pass --chat_template with the one it equals (" +
                    list + "), after checking with zerolora data-preview");
}

RenderedChat ChatTemplate::render(const std::vector<ChatMessage>& messages, const std::string& bos,
                                  const std::string& eos, bool add_generation_prompt) const {
  check_roles(messages, name_);
  Renderer r;
  if (name_ == "llama3") {
    render_llama3(messages, bos, r);
  } else if (name_ == "llama3.1") {
    render_llama31(messages, bos, "26 Jul 2024", r);
  } else if (name_ == "llama3.2") {
    render_llama31(messages, bos, day_month_year(date_), r);
  } else if (name_ == "qwen2.5") {
    const std::string system = kQwenDefaultSystem;
    render_chatml(messages, &system, r);
  } else if (name_ == "chatml") {
    render_chatml(messages, nullptr, r);
  } else if (name_ == "mistral") {
    render_mistral(messages, bos, eos, r);
  } else if (name_ == "mistral-v7") {
    render_mistral_v7(messages, bos, eos, date_, r);
  } else if (name_ == "llama2-chat") {
    render_llama2_chat(messages, bos, eos, r);
  } else {
    render_zephyr(messages, eos, r);
  }
  if (add_generation_prompt) {  // Mistral and Llama 2 chat end a user turn with [/INST]
    if (name_.starts_with("llama3"))
      r.add("<|start_header_id|>assistant<|end_header_id|>\n\n");
    else if (name_ == "qwen2.5" || name_ == "chatml")
      r.add("<|im_start|>assistant\n");
    else if (name_ == "zephyr")
      r.add("<|assistant|>\n");
  }
  return r.take();
}

std::vector<std::int32_t> encode_chat_text(const Tokenizer& tokenizer, std::string_view text) {
  if (std::string_view(tokenizer.format()) != "sentencepiece") return tokenizer.encode(text);
  const std::array<std::int32_t, 2> specials{tokenizer.bos_id(), tokenizer.eos_id()};
  std::vector<std::int32_t> ids;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t next = text.size(), length = 0;
    std::int32_t id = -1;
    for (const std::int32_t s : specials) {
      if (s < 0) continue;
      const std::string piece = tokenizer.token_text(s);
      const std::size_t found = text.find(piece, at);
      if (!piece.empty() && found < next) next = found, length = piece.size(), id = s;
    }
    const auto part = tokenizer.encode(text.substr(at, next - at));
    ids.insert(ids.end(), part.begin(), part.end());
    if (id >= 0) ids.push_back(id);
    at = next + length;
  }
  return ids;
}

namespace {

// Where byte `at` of a chat's text falls among the tokens of the whole text (`full`), as
// Transformers' assistant masks see it (a token is in a turn when its characters overlap the
// turn's): `before` tokens end by `at`, `through` hold some of the text before it. They differ
// where a token straddles `at`, merged across it: Mistral's "[/INST] " + "Sure" is one
// "▁Sure"; an end-of-turn marker that is not a special token can merge with the next turn's
// first characters.
struct TokenCut {
  Index before, through;
};

// The tokenizer gives no offsets. The text before `at`, encoded alone, agrees with the whole
// text's tokens up to some token; the agreeing tokens are taken to end by `at`. (Not so where
// an added token with rstrip absorbs the whitespace after `at`, or a fused unknown token the
// characters after it: that token counts as before the turn, where Transformers' mask has it
// in the turn. The released tokenizers of the templates zerolora renders are not known to
// have either before a turn.) Past the agreement, both encode the same text up to `at`, so the
// lengths of the tokens' pieces (one representation on both sides: byte-level characters, "▁"
// pieces, <0x..> bytes) say which of the whole text's tokens end by `at`.
TokenCut cut_tokens(const Tokenizer& tokenizer, std::string_view text,
                    const std::vector<std::int32_t>& full, std::size_t at) {
  const auto prefix = encode_chat_text(tokenizer, text.substr(0, at));
  const std::size_t n = std::min(prefix.size(), full.size());
  const auto agree = static_cast<std::size_t>(
      std::mismatch(prefix.begin(), prefix.begin() + static_cast<std::ptrdiff_t>(n), full.begin())
          .first -
      prefix.begin());
  std::size_t rest = 0;  // the length of the prefix's pieces past the agreement
  for (std::size_t i = agree; i < prefix.size(); ++i)
    rest += tokenizer.token_text(prefix[i]).size();
  std::size_t before = agree, covered = 0;
  while (before < full.size()) {
    const std::size_t piece = tokenizer.token_text(full[before]).size();
    if (covered + piece > rest) break;
    covered += piece;
    ++before;
  }
  const bool straddles = covered < rest && before < full.size();
  return {static_cast<Index>(before), static_cast<Index>(before + (straddles ? 1 : 0))};
}

}  // namespace

TokenSequence tokenize_chat(const Tokenizer& tokenizer, const RenderedChat& chat,
                            const TokenizeOptions& o, ChatReport& report) {
  TokenSequence seq;
  const std::vector<std::int32_t> full = encode_chat_text(tokenizer, chat.text);
  seq.input_ids = full;
  const Index L = o.max_seq_length;
  const bool truncated = seq.size() > L;
  if (truncated) seq.input_ids.resize(static_cast<std::size_t>(L));
  if (o.train_on_inputs) {
    seq.labels = seq.input_ids;
  } else {
    seq.labels.assign(seq.input_ids.size(), kIgnoreIndex);
    for (const auto& span : chat.trainable) {
      // From the token holding the turn's first character to the one holding its last, as
      // Transformers' assistant masks.
      const Index begin = cut_tokens(tokenizer, chat.text, full, span.begin).before;
      const Index end = cut_tokens(tokenizer, chat.text, full, span.end).through;
      if (begin >= seq.size()) {
        if (truncated) ++report.truncated_turns;
        continue;
      }
      if (end > seq.size()) {  // a turn cut in two trains on nothing
        ++report.truncated_turns;
        continue;
      }
      std::copy(seq.input_ids.begin() + begin, seq.input_ids.begin() + end,
                seq.labels.begin() + begin);
    }
  }
  seq.segment_lengths = {static_cast<std::int32_t>(seq.size())};
  return seq;
}

std::vector<TokenSequence> tokenize_chat_records(Runtime& rt, const std::vector<Record>& records,
                                                 const ChatTemplate& chat_template,
                                                 const Tokenizer& tokenizer,
                                                 const TokenizeOptions& options, ChatReport& report,
                                                 const std::string& file) {
  if (options.max_seq_length < 2) throw ConfigError("max_seq_length must be at least 2");
  const std::string bos = tokenizer.bos_id() >= 0 ? tokenizer.token_text(tokenizer.bos_id()) : "";
  // The template's eos_token is the tokenizer's (tokenizer_config.json), not config.json's.
  const std::int32_t eos_id = tokenizer.eos_id() >= 0 ? tokenizer.eos_id() : options.eos_id;
  const std::string eos = eos_id >= 0 ? tokenizer.token_text(eos_id) : "";
  std::vector<TokenSequence> out(records.size());
  std::vector<std::string> errors(records.size());
  std::vector<std::int64_t> cut(records.size(), 0);
  const Index n = static_cast<Index>(records.size());
#pragma omp parallel for num_threads(rt.threads()) schedule(dynamic, 16)
  for (Index i = 0; i < n; ++i) {
    try {
      ChatReport own;
      out[i] = tokenize_chat(tokenizer, chat_template.render(records[i].messages, bos, eos),
                             options, own);
      cut[i] = own.truncated_turns;
    } catch (const std::exception& e) {
      errors[i] = e.what();
    }
  }
  for (Index i = 0; i < n; ++i) {
    if (!errors[i].empty()) {
      const auto& r = records[static_cast<std::size_t>(i)];
      throw FormatError(file + ": record " +
                        std::to_string(r.source_index >= 0 ? r.source_index : i) + ": " +
                        errors[i]);
    }
    report.truncated_turns += cut[i];
    if (chat_template.writes_date(records[static_cast<std::size_t>(i)].messages)) ++report.dated;
  }
  return out;
}

}  // namespace zerolora
