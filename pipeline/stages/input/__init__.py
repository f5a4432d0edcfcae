"""The read stage: a run's input file, checked as a whole, then streamed in chunks of rows.

`opening.open_input` is the entry. Where each thing is decided:

- `opening`: which reader a file gets (its suffix, or "-" for stdin) and the options it allows;
- `columns`: which column each field is read from (the header, `--map`, look-alike warnings);
- `input_file`: `InputFile`, the interface every reader implements, and the rows it yields;
- `csv_text`: how a CSV file's bytes become records (UTF-8, lines, delimiter, binary refused);
- `csv_file`: a CSV file's checks and rows; `csv_fast`: its pyarrow fast path for plain files;
- `parquet`: a Parquet file's checks and rows;
- `spreadsheet`: one sheet of a workbook; `spreadsheet_marks`: its error cells, hidden rows and
  merged blocks, found in the file itself.
"""
