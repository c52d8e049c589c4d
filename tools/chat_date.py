"""One date for the chat templates that write one (Llama 3.2, Mistral v7): Transformers renders
strftime_now from datetime.now(), so the fixture and check scripts fix it to the date that
zerolora is given (--chat_date), and their results cannot change with the day."""


def fix_chat_date(date):
    """Make Transformers' strftime_now render `date` (YYYY-MM-DD) from now on."""
    import datetime
    import transformers.utils.chat_template_utils as templating

    class FixedDate(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls.fromisoformat(date)

    templating.datetime = FixedDate  # what the templates' strftime_now reads
